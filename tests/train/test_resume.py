"""Preemption, exact resume, broken checkpoints, non-finite losses and export, through the real
`harness submit` on the local executor (DeepSpeed over gloo, 1 or 2 ranks)."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from harness.model.open_lm import Architecture, OpenLM
from harness.rundir import find_runs
from harness.train import checkpoints
from harness.rundir import read_metrics, without_timing
from harness.train.model_file import load_model_file
from tests.conftest import micro_args, run_cli
from tests.launch.test_slurm_cluster import wait_until

CKPT = ("train.checkpoint_every_steps=4", "train.keep_last=3")


def submit(runs_root: Path, data_root: Path, *extra: str, env: dict | None = None):
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return run_cli("submit", "experiment=random_init", *micro_args(runs_root, data_root), *CKPT, *extra)
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def the_run(runs_root: Path):
    (run,) = find_runs(runs_root)
    return run


def final_weights(run) -> dict:
    return load_model_file(run.checkpoints / "final")["state_dict"]


@pytest.fixture(scope="module")
def references(tmp_path_factory, data_root):
    """Uninterrupted runs with one and two ranks."""
    refs = {}
    for ranks in (1, 2):
        root = tmp_path_factory.mktemp(f"reference{ranks}")
        result = submit(root, data_root, f"launch.tasks_per_node={ranks}")
        assert result.returncode == 0, result.stderr
        refs[ranks] = the_run(root)
    return refs


@pytest.mark.parametrize("ranks, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_interrupted_and_resumed_equals_uninterrupted(references, tmp_path, data_root, ranks, workers):
    args = (f"launch.tasks_per_node={ranks}", f"train.loader_workers={workers}")
    first = submit(tmp_path, data_root, *args, env={"HARNESS_PREEMPT_AT_STEP": "7"})
    assert first.returncode == 1 and "preempted: checkpointed" in first.stderr, first.stderr
    run = the_run(tmp_path)
    assert (run.checkpoints / "step00000007" / checkpoints.COMPLETE).exists() and not run.done_path.exists()

    second = submit(tmp_path, data_root, *args)
    assert second.returncode == 0, second.stderr
    assert "resumed from step00000007" in (run.logs(2) / "rank0.log").read_text()
    reference = references[ranks]
    got, want = without_timing(read_metrics(run.metrics_path)), without_timing(read_metrics(reference.metrics_path))
    assert got == want  # bit for bit, and no duplicated lines from replayed steps
    ours, theirs = final_weights(run), final_weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert [a["exit_reason"] for a in run.attempts()][0].startswith("preempted")


def test_incomplete_and_truncated_checkpoints_are_never_loaded(references, tmp_path, data_root):
    first = submit(tmp_path, data_root, env={"HARNESS_PREEMPT_AT_STEP": "12"})
    assert first.returncode == 1
    run = the_run(tmp_path)
    # As if killed while writing step 12, and as if step 8 lost bytes after it was complete.
    (run.checkpoints / "step00000012" / checkpoints.COMPLETE).unlink()
    shard = run.checkpoints / "step00000008" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])

    second = submit(tmp_path, data_root)
    assert second.returncode == 0, second.stderr
    log = (run.logs(2) / "rank0.log").read_text()
    assert "not resuming from step00000012" in log and "no COMPLETE marker" in log
    assert f"{shard} is truncated" in log
    assert "resumed from step00000004" in log
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(references[2].metrics_path))


def test_sigkill_while_saving_resumes_from_the_previous_complete_checkpoint(references, tmp_path, data_root):
    first = submit(tmp_path, data_root, env={"HARNESS_KILL_IN_SAVE_AT_STEP": "8"})
    assert first.returncode == 1
    run = the_run(tmp_path)
    assert (run.checkpoints / "step00000008").is_dir()  # written in part, never marked complete
    assert not (run.checkpoints / "step00000008" / checkpoints.COMPLETE).exists()
    second = submit(tmp_path, data_root)
    assert second.returncode == 0, second.stderr
    log = (run.logs(2) / "rank0.log").read_text()
    assert "not resuming from step00000008" in log and "resumed from step00000004" in log
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(references[2].metrics_path))


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    result = submit(tmp_path, data_root, env={"HARNESS_INJECT_NAN_AT_STEP": "10"})
    assert result.returncode == 1
    assert "non-finite loss (nan) at step 10" in result.stderr and "last good checkpoint: step00000008" in result.stderr
    run = the_run(tmp_path)
    # Each rank ended by its own error (a HarnessError exits 2), not by a signal during teardown.
    assert [json.loads((run.logs(1) / f"rank{r}.json").read_text())["exit_code"] for r in (0, 1)] == [2, 2]
    assert checkpoints.verify(run.checkpoints / "step00000008") is None
    assert not (run.checkpoints / "step00000010").exists() and not run.done_path.exists()
    assert max(r["step"] for r in read_metrics(run.metrics_path)) < 10


def test_usr2_to_one_rank_gives_one_consistent_checkpoint_and_a_clean_exit(tmp_path, data_root):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "harness", "submit", "experiment=random_init",
            *micro_args(tmp_path, data_root), "train.steps=100000", "train.log_every=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        run = wait_until(lambda: find_runs(tmp_path) and find_runs(tmp_path)[0], 60, "the run directory")
        rank1 = run.logs(1) / "rank1.json"
        wait_until(lambda: read_metrics(run.metrics_path) and rank1.exists() and json.loads(rank1.read_text())["pid"],
                   120, "training")
        os.kill(json.loads(rank1.read_text())["pid"], signal.SIGUSR2)  # rank 1's trainer only
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "preempted: checkpointed" in stderr, stderr
    (saved,) = checkpoints.complete(run.checkpoints)
    assert checkpoints.verify(saved) is None
    step = json.loads((saved / checkpoints.CLIENT).read_text())["step"]
    assert {json.loads((run.logs(1) / f"rank{r}.json").read_text())["exit_code"] for r in (0, 1)} == {75}
    assert read_metrics(run.metrics_path)[-1]["step"] == step


def test_export_of_a_two_rank_checkpoint_loads_on_one_process_with_the_same_logits(references, tmp_path):
    run = references[2]
    result = run_cli("export", run.name, "--step", "24", "--runs-root", str(run.path.parents[1]))
    assert result.returncode == 0, result.stderr
    exported = load_model_file(run.checkpoints / "export-step00000024")
    # What DeepSpeed held as the trained module on rank 0 (fp32, ZeRO-1: the full weights).
    module = torch.load(run.checkpoints / "step00000024" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)["module"]
    tokens = torch.randint(0, exported["architecture"]["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    logits = []
    for state in (exported["state_dict"], module):
        model = OpenLM(Architecture(**exported["architecture"]))
        model.load_state_dict(state)
        logits.append(model(tokens))
    assert torch.equal(logits[0], logits[1])
    assert run_cli("export", run.name, "--step", "3", "--runs-root", str(run.path.parents[1])).returncode == 2
