"""experiment=train_tokenizer at micro scale, through `harness submit`: a job like any other, whose
artifact is a portable tokenizer and whose preempted attempt resumes to the same weights."""

import json
import os

import numpy as np
import pytest

from harness import artifacts
from harness.data import portable
from harness.data.image_tokenizer import ImageTokenizer
from harness.errors import HarnessError
from harness.rundir import find_runs, read_metrics, without_timing
from tests.conftest import run_cli

# restart_after=1: dead codes restart (from the saved generator) after the resume too
SHORT = ("scale=micro", "tokenizer_training.steps=6", "tokenizer_training.checkpoint_every=0",
         "tokenizer_training.eval_images=16", "tokenizer_training.warmup_steps=2", "train.log_every=2",
         "tokenizer_training.restart_after=1")


def submit(runs_root, *extra, env=None):
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return run_cli("submit", "experiment=train_tokenizer", f"paths.runs_root={runs_root}", *SHORT, *extra)
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    result = submit(root)
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(root)
    return run, result


def test_the_job_writes_a_portable_tokenizer_and_its_held_out_report(trained):
    run, result = trained
    assert run.done_path.exists() and "held-out PSNR" in result.stdout
    tokenizer = ImageTokenizer.load(run.path / "artifact", "test")
    assert tokenizer.encoding == portable.DESCRIPTION and tokenizer.codebook_size == 256
    portable.on_grid(tokenizer.codebook, "the codebook")  # raises if the codebook left the grid
    report = json.loads((run.path / "eval" / "reconstruction@6.json").read_text())
    assert report["fingerprint"] == tokenizer.fingerprint() and report["images"] == 16
    assert report["psnr"] > 0 and 0 < report["usage"]["share"] <= 1
    assert report["oracle_on_real_images"] >= 0.95  # the oracle itself reads the real images
    assert (run.path / "eval" / "reconstruction@6.png").exists()
    assert [m["step"] for m in read_metrics(run.metrics_path)] == [2, 4, 6]


def test_a_preempted_attempt_resumes_to_the_same_weights(trained, tmp_path):
    reference, _ = trained
    first = submit(tmp_path, env={"HARNESS_PREEMPT_AT_STEP": "3"})
    assert first.returncode == 1 and "preempted" in (first.stdout + first.stderr)
    (run,) = find_runs(tmp_path)
    assert (run.checkpoints / "last.pt").exists() and not run.done_path.exists()
    second = submit(tmp_path)
    assert second.returncode == 0, second.stderr
    ours, theirs = (json.loads((r.path / "eval" / "reconstruction@6.json").read_text()) for r in (run, reference))
    assert ours["fingerprint"] == theirs["fingerprint"]
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(reference.metrics_path))


def test_publish_versions_the_artifact_with_its_provenance(trained, tmp_path, monkeypatch):
    run, _ = trained
    monkeypatch.setattr(artifacts, "ROOT", tmp_path / "artifacts")
    target, record = artifacts.publish(run)
    assert target == tmp_path / "artifacts" / "tokenizer-micro"
    assert record["run"] == run.name and record["config_keys"]["data.image_tokenizer_sha256"] == record["sha256"]
    assert artifacts.artifact_path("tokenizer-micro", "data.image_tokenizer") == target
    assert ImageTokenizer.load(target, "test").fingerprint() == record["sha256"]
    with pytest.raises(HarnessError, match="no published artifact.*published: tokenizer-micro"):
        artifacts.artifact_path("tokenizer-typo", "data.image_tokenizer")


def test_only_a_finished_world_job_is_published(local_micro_run, tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "ROOT", tmp_path / "artifacts")
    _, run_dir, _ = local_micro_run
    from harness.rundir import RunDir
    with pytest.raises(HarnessError, match="publish takes train_tokenizer or train_classifier runs"):
        artifacts.publish(RunDir(run_dir))


def test_the_world_jobs_refuse_data_that_is_not_synthetic(tmp_path):
    result = run_cli("submit", "--dry-run", "experiment=train_tokenizer", "data=cc12m", f"paths.runs_root={tmp_path}")
    assert result.returncode == 2 and "trains on the synthetic world" in result.stderr


def test_the_round_trip_metrics():
    from harness.eval import reconstruction

    real = np.zeros((2, 8, 8, 3), np.uint8)
    assert reconstruction.psnr(real, real) == float("inf")
    assert abs(reconstruction.psnr(real, real + 255) - 0.0) < 1e-9
    used = reconstruction.usage(np.array([[0, 0, 1, 1]]), 4)
    assert used["used"] == 2 and used["dead"] == 2 and used["share"] == 0.5 and abs(used["perplexity"] - 2) < 1e-9
