"""End to end through the real `harness` command: submit at micro scale on the local default
(submitit LocalExecutor, two DeepSpeed ranks over gloo), resubmit, collect, and bad input."""

import json
from pathlib import Path

import pytest

from harness.data.shards import read_shard
from tests.conftest import micro_args, run_cli


@pytest.fixture
def micro_run(local_micro_run):
    return local_micro_run


def test_submit_runs_to_completion_and_prints_the_run_dir(micro_run):
    _, run_dir, result = micro_run
    assert f"done in {run_dir}" in result.stdout
    assert "final loss_text" in result.stdout
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "DONE", "checkpoints/final/COMPLETE"):
        assert (run_dir / name).exists(), name


def test_metrics_have_one_line_per_logged_step_and_the_image_loss_falls(micro_run):
    _, run_dir, _ = micro_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, *range(2, 25, 2)]
    for r in records:
        assert {"step", "tokens", "loss", "loss_text", "loss_image", "lr", "grad_norm", "timing"} <= set(r)
    # 24 micro steps take the image loss from ln(vocab size) most of the way to the code entropy
    assert records[-1]["loss_image"] <= 0.85 * records[0]["loss_image"]
    assert records[-1]["tokens"] > records[0]["tokens"] > 0


def test_provenance_records_world_size_data_and_the_attempt(micro_run):
    _, run_dir, _ = micro_run
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["world_size"] == 2
    assert len(provenance["data"]["hash"]) == 64 and "trained: harness/artifacts/tokenizer-micro" in provenance["data"]["image_tokenizer_weights"]
    assert {"torch", "deepspeed", "submitit"} <= set(provenance["packages"])
    (attempt,) = provenance["attempts"]
    assert attempt["exit_reason"] == "completed" and attempt["job_id"] and attempt["nodes"]


def test_ranks_read_disjoint_samples_that_together_are_the_epoch(micro_run, micro_dataset):
    _, run_dir, _ = micro_run
    rank0 = (run_dir / "logs/1/sample_ids.rank0.txt").read_text().split()
    rank1 = (run_dir / "logs/1/sample_ids.rank1.txt").read_text().split()
    epoch = {s.sample_id for entry in micro_dataset.shard_entries("captions", "train")
             for s in read_shard(micro_dataset.root / "captions" / entry["file"])}
    assert not set(rank0) & set(rank1)
    assert len(rank0) == len(set(rank0)) and len(rank1) == len(set(rank1))
    assert set(rank0) | set(rank1) == epoch


def test_the_run_executed_the_frozen_code_snapshot(micro_run):
    runs_root, run_dir, _ = micro_run
    provenance = json.loads((run_dir / "provenance.json").read_text())
    snapshot = runs_root / ".code" / provenance["code_snapshot"]
    assert (snapshot / "harness" / "launch" / "task.py").exists()
    record = json.loads((run_dir / "logs" / "1" / "rank0.json").read_text())
    assert record["code"] == str(snapshot)


def test_logs_shows_the_trainer_output(micro_run):
    runs_root, run_dir, _ = micro_run
    result = run_cli("logs", f"random_init/{run_dir.name}", "--runs-root", str(runs_root))
    assert result.returncode == 0 and result.stdout == (run_dir / "logs/1/rank0.log").read_text()
    assert run_cli("logs", "nope", "--runs-root", str(runs_root)).returncode == 2


def test_status_reads_the_run_directory(micro_run):
    runs_root, run_dir, _ = micro_run
    result = run_cli("status", "--runs-root", str(runs_root))
    row = next(line for line in result.stdout.splitlines() if run_dir.name in line)
    assert row.split()[3] == "done" and row.split()[5] == "24"


def test_the_readme_smoke_run_learns_on_two_ranks_that_read_disjoint_halves(tmp_path, smoke_data_root):
    """The README's first command (smoke scale, the local default), as a fresh clone runs it."""
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=random_init", f"paths.runs_root={runs_root}",
                     f"paths.data_root={smoke_data_root}")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (runs_root / "random_init").iterdir()
    assert f"done in {run_dir}" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, *range(5, 151, 5)]
    assert records[-1]["loss_image"] <= 0.8 * records[0]["loss_image"]
    assert json.loads((run_dir / "provenance.json").read_text())["world_size"] == 2
    ranks = [set((run_dir / f"logs/1/sample_ids.rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == 2048  # the smoke train split


def test_force_starts_over_and_keeps_the_old_directory_beside_it(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    args = ["experiment=random_init", *micro_args(runs_root, data_root, "train.steps=4")]
    assert run_cli("submit", *args).returncode == 0
    (run_dir,) = (runs_root / "random_init").iterdir()
    forced = run_cli("submit", *args, "--force")
    assert forced.returncode == 0, forced.stderr
    (kept,) = (runs_root / "random_init").glob(f"{run_dir.name}.replaced-*")
    assert (kept / "DONE").exists() and (run_dir / "DONE").exists()
    assert len(json.loads((run_dir / "provenance.json").read_text())["attempts"]) == 1


def test_submitting_the_same_config_again_starts_no_new_run(micro_run, data_root):
    runs_root, run_dir, _ = micro_run
    again = run_cli("submit", "experiment=random_init", *micro_args(runs_root, data_root))
    assert again.returncode == 0
    assert "already done" in again.stdout
    assert list((runs_root / "random_init").iterdir()) == [run_dir]
    assert len(json.loads((run_dir / "provenance.json").read_text())["attempts"]) == 1


def test_collect_lists_the_run(micro_run, tmp_path):
    runs_root, run_dir, _ = micro_run
    output = tmp_path / "RESULTS.md"
    result = run_cli("collect", "--runs-root", str(runs_root), "--output", str(output))
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert f"[{run_dir.name}](" in text and "## Scale: micro" in text and "| random_init | 0 | 24 |" in text


def test_show_prints_the_config_and_run_id_without_running(micro_run, data_root):
    runs_root, run_dir, _ = micro_run
    result = run_cli("show", "experiment=random_init", *micro_args(runs_root, data_root))
    assert result.returncode == 0, result.stderr
    assert "experiment: random_init" in result.stdout
    assert f"run: random_init/{run_dir.name}  (done;" in result.stdout


# Bad input (unknown experiment or key, wrong type, a corrupt shard, ...): tests/test_bad_input.py.


def test_pretrained_runs_its_pretrain_text_dependency_first(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=pretrained", *micro_args(runs_root, data_root))
    assert result.returncode == 0, result.stderr
    (upstream,) = (runs_root / "pretrain_text").iterdir()
    (downstream,) = (runs_root / "pretrained").iterdir()
    assert result.stdout.index(f"pretrain_text/{upstream.name}: done") < result.stdout.index(f"pretrained/{downstream.name}: done")
    assert f"source: pretrain_text/{upstream.name}" in (downstream / "config.yaml").read_text()
    assert (upstream / "DONE").exists() and (downstream / "DONE").exists()


def test_a_failed_run_names_the_problem_and_a_resubmit_is_a_new_attempt(tmp_path, data_root, monkeypatch):
    runs_root = tmp_path / "runs"
    monkeypatch.setenv("HARNESS_INJECT_NAN_AT_STEP", "3")  # the trainer fails mid-run
    failed = run_cli("submit", *micro_args(runs_root, data_root))
    assert failed.returncode == 1
    assert "non-finite loss (nan) at step 3" in failed.stderr and failed.stderr.count("\n") == 1

    monkeypatch.delenv("HARNESS_INJECT_NAN_AT_STEP")
    again = run_cli("submit", *micro_args(runs_root, data_root))
    assert again.returncode == 0, again.stderr
    assert "previous attempt failed; starting a new attempt" in again.stdout
    (run_dir,) = (runs_root / "random_init").iterdir()
    attempts = json.loads((run_dir / "provenance.json").read_text())["attempts"]
    assert "non-finite loss" in attempts[0]["exit_reason"] and attempts[1]["exit_reason"] == "completed"
    assert (run_dir / "logs" / "1" / "metrics.jsonl").exists()  # the failed attempt's lines, kept apart


def test_options_may_come_between_overrides(runs_root, data_root):
    result = run_cli("submit", "experiment=random_init", "--dry-run", *micro_args(runs_root, data_root))
    assert result.returncode == 0 and "scale=micro" not in result.stderr, result.stderr
    assert "would run 2 local task(s)" in result.stdout
    bad = run_cli("submit", "experiment=random_init", "--dry-run", "--no-such-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
