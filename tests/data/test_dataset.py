import pytest

from harness.config import compose_runs
from harness.data.dataset import dataset_dir, open_dataset
from harness.data.synthetic import captioned_image, text_document
from harness.errors import HarnessError


def test_the_micro_dataset_has_both_corpora_and_a_shared_tokenizer(micro_dataset):
    captions, text = micro_dataset.layout("captions"), micro_dataset.layout("text")
    assert captions.text_size == text.text_size and text.codebook_size == 0
    sample = micro_dataset.reader("captions", "train").sample(0, 0)
    assert sample.image_ids.shape == (16,) and sample.image_ids.max() < captions.codebook_size
    manifest = micro_dataset.manifest
    assert "random" in manifest["image_tokenizer"]["weights"]
    assert sum(e["samples"] for e in manifest["corpora"]["captions"]["train"]) == 256


def test_synthetic_samples_are_deterministic_and_text_is_not_captions():
    a, b = captioned_image(5, "train", 32, 1), captioned_image(5, "train", 32, 1)
    assert a.caption == b.caption and (a.pixels == b.pixels).all()
    assert captioned_image(6, "train", 32, 1).caption != a.caption or not (captioned_image(6, "train", 32, 1).pixels == a.pixels).all()
    _, doc = text_document(0, "train", 1)
    assert "background" not in doc


def test_a_missing_prebuilt_dataset_names_the_restore_command(tmp_path):
    config = compose_runs(["scale=paper"])[0].config.data
    with pytest.raises(HarnessError, match=r"dataset 'hqitp' is missing at .*dvc pull"):
        open_dataset(config, tmp_path)


def test_builder_settings_select_their_own_directory(tmp_path):
    base = compose_runs(["scale=micro"])[0].config.data
    other = compose_runs(["scale=micro", "data.n_train=128"])[0].config.data
    assert dataset_dir(base, tmp_path) != dataset_dir(other, tmp_path)
    assert dataset_dir(base, tmp_path) == dataset_dir(compose_runs(["scale=micro", "data.seq_len=64"])[0].config.data, tmp_path)
