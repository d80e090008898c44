"""The shapes classifier behind "FD (shapes classifier)": its labels, its job, and (with the
published smoke artifacts) that FD over its features tells good images from bad by a wide margin."""

import json

import numpy as np
import pytest
import torch

from harness.artifacts import artifact_path, provenance
from harness.config import compose_runs
from harness.data import synthetic
from harness.data.image_tokenizer import ImageTokenizer
from harness.eval import fid, reconstruction
from harness.eval import shapes_classifier as sc
from harness.rundir import find_runs
from tests.conftest import run_cli


def test_labels_follow_the_caption():
    caption = "a small red circle at the top left and a large blue square at the centre on a green background"
    labels = sc.labels([caption])
    assert labels["background"].item() == sc.COLOURS.index("green")
    assert labels["top left/colour"].item() == sc.COLOURS.index("red") + 1
    assert labels["centre/shape"].item() == synthetic.SHAPES.index("square") + 1
    assert labels["centre/size"].item() == list(synthetic.SIZES).index("large") + 1
    assert labels["bottom right/colour"].item() == 0  # no shape there


def test_the_job_writes_the_weights_it_reports(tmp_path):
    result = run_cli("submit", "experiment=train_classifier", "scale=micro", "classifier_training.steps=4",
                     "classifier_training.eval_images=16", f"paths.runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(tmp_path)
    report = json.loads((run.path / "eval" / "classifier@4.json").read_text())
    assert report["sha256"] == sc.file_sha256(run.path / "artifact" / sc.WEIGHTS)
    assert set(report["accuracy"]) == {"background", "colour", "shape", "size"}
    assert "held-out accuracy" in result.stdout


def _published(scale: str):
    config = compose_runs([f"scale={scale}"])[0].config
    tokenizer_dir = artifact_path(config.data.image_tokenizer, "data.image_tokenizer")
    tokenizer = ImageTokenizer.load(tokenizer_dir, "published")
    extractor = fid.shapes_classifier(artifact_path(config.eval.features, "eval.features"),
                                      config.eval.features_sha256, config.data.image_size)
    return config, tokenizer, extractor


def test_the_published_smoke_tokenizer_reconstructs_what_captions_say():
    config, tokenizer, _ = _published("smoke")
    assert tokenizer.fingerprint() == config.data.image_tokenizer_sha256
    report = reconstruction.report(tokenizer, config.data, 64)
    assert report["oracle"]["attribute_accuracy"] >= 0.95, report["oracle"]
    published = provenance(artifact_path(config.data.image_tokenizer, "data.image_tokenizer"))["report"]
    assert published["usage"]["share"] > 0.5 and published["oracle"]["attribute_accuracy"] >= 0.95


def test_fd_over_the_classifier_separates_good_images_from_noise_by_a_wide_margin():
    """Round trips through the trained tokenizer (what a perfect model would generate) against the
    decoded codes an untrained model draws (uniform over the codebook)."""
    config, tokenizer, extractor = _published("smoke")
    real = np.stack([s.pixels for s in reconstruction.held_out(config.data, 128)])
    other = np.stack([synthetic.captioned_image(i, "classifier-test", config.data.image_size, config.data.seed).pixels
                      for i in range(128)])
    _, round_trips = reconstruction.round_trip(tokenizer, other)
    uniform = torch.from_numpy(np.random.default_rng(0).integers(0, tokenizer.codebook_size, (128, 64)))
    noise = tokenizer.decode_to_uint8(uniform)
    reference = fid.Statistics.of(extractor.features(real))
    good = fid.frechet_distance(fid.Statistics.of(extractor.features(round_trips)), reference)
    bad = fid.frechet_distance(fid.Statistics.of(extractor.features(noise)), reference)
    assert bad > 5 * good, (good, bad)
