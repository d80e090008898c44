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
    assert manifest["image_tokenizer"]["weights"].startswith("trained: harness/artifacts/tokenizer-micro")
    assert manifest["image_tokenizer"]["sha256"] == compose_runs(["scale=micro"])[0].config.data.image_tokenizer_sha256
    assert sum(e["samples"] for e in manifest["corpora"]["captions"]["train"]) == 256


def test_synthetic_samples_are_deterministic_and_documents_are_not_captions():
    a, b = captioned_image(5, "train", 32, 1), captioned_image(5, "train", 32, 1)
    assert a.caption == b.caption and (a.pixels == b.pixels).all()
    assert captioned_image(6, "train", 32, 1).caption != a.caption or not (captioned_image(6, "train", 32, 1).pixels == a.pixels).all()
    captions = {captioned_image(i, "train", 32, 1).caption for i in range(200)}
    assert not captions & {text_document(i, "train", 1)[1] for i in range(200)}


def test_a_missing_prebuilt_dataset_names_the_restore_command(tmp_path):
    config = compose_runs(["scale=paper"])[0].config.data
    with pytest.raises(HarnessError, match=r"dataset 'hqitp' is missing at .*dvc pull"):
        open_dataset(config, tmp_path)


def test_builder_settings_select_their_own_directory(tmp_path):
    base = compose_runs(["scale=micro"])[0].config.data
    other = compose_runs(["scale=micro", "data.n_train=128"])[0].config.data
    assert dataset_dir(base, tmp_path) != dataset_dir(other, tmp_path)
    assert dataset_dir(base, tmp_path) == dataset_dir(compose_runs(["scale=micro", "data.seq_len=64"])[0].config.data, tmp_path)


def test_a_published_tokenizer_whose_hash_differs_is_refused_before_anything_is_built(tmp_path):
    config = compose_runs(["scale=micro", "data.image_tokenizer_sha256=" + "0" * 64])[0].config
    from harness.data.dataset import ensure_dataset

    with pytest.raises(HarnessError, match="data.image_tokenizer=tokenizer-micro .*fingerprint .* differs"):
        ensure_dataset(config.data, tmp_path, log=lambda _msg: None)
    assert not list(tmp_path.iterdir())  # not even a staging directory
    config = compose_runs(["scale=micro", "data.image_tokenizer=tokenizer-nope"])[0].config
    with pytest.raises(HarnessError, match="no published artifact"):
        ensure_dataset(config.data, tmp_path, log=lambda _msg: None)
