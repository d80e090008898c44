"""Against a real Slurm cluster (.ci/slurm-up.sh: three virtual nodes n1, n2, n3 on one machine)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.config import load_run_config
from harness.rundir import find_runs
from harness.rundir import read_metrics, without_timing
from tests.conftest import micro_args, run_cli

SLURM = ("cluster=slurm_ci",)


def slurm_args(runs_root: Path, data_root: Path, *extra: str) -> list[str]:
    return [*SLURM, *micro_args(runs_root, data_root), *extra]


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def squeue_ids(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", job], capture_output=True, text=True).stdout
    return out.split()


def job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "provenance.json").read_text())["attempts"][-1]["job_id"]


def rank_record(run_dir: Path, rank: int) -> dict:
    path = run_dir / "logs" / "1" / f"rank{rank}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_sweep_is_one_array_job_with_ranks_on_both_nodes(slurm_cluster, tmp_path, data_root, local_micro_run):
    runs_root = tmp_path / "runs"
    args = slurm_args(runs_root, data_root, "experiment=random_init", "seed=0,1")
    dry = run_cli("submit", *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr

    result = run_cli("submit", *args, "--wait")
    assert result.returncode == 0, result.stderr + result.stdout
    runs = sorted(find_runs(runs_root), key=lambda r: json.loads(r.provenance_path.read_text())["attempts"][0]["job_id"])
    assert len(runs) == 2
    jobs = [job_id(r.path) for r in runs]
    assert jobs[0].split("_")[0] == jobs[1].split("_")[0] and sorted(j.split("_")[1] for j in jobs) == ["0", "1"]
    for run in runs:
        assert (run.path / "DONE").exists()
        assert rank_record(run.path, 0)["node"] == "n1" and rank_record(run.path, 1)["node"] == "n2"
        # The job ran the code frozen at submit, not the live checkout.
        assert rank_record(run.path, 0)["code"].startswith(str(runs_root / ".code"))
        assert (run.path / "submit.sh").read_text() in dry.stdout  # exactly what --dry-run printed

    _, local_run, _ = local_micro_run
    (seed0,) = [r for r in runs if load_run_config(r.config_path).seed == 0]
    assert seed0.run_id == local_run.name  # same config and world size: same identity
    assert without_timing(read_metrics(seed0.metrics_path)) == without_timing(read_metrics(local_run / "metrics.jsonl"))
    (seed1,) = [r for r in runs if load_run_config(r.config_path).seed == 1]
    local_root = tmp_path / "local"
    assert run_cli("submit", "experiment=random_init", "seed=1", *micro_args(local_root, data_root)).returncode == 0
    (local_seed1,) = find_runs(local_root)
    assert seed1.run_id == local_seed1.run_id
    assert without_timing(read_metrics(seed1.metrics_path)) == without_timing(read_metrics(local_seed1.metrics_path))

    status = run_cli("status", "--runs-root", str(runs_root))
    assert status.returncode == 0 and status.stdout.count(" done ") == 2, status.stdout
    output = tmp_path / "RESULTS.md"
    assert run_cli("collect", "--runs-root", str(runs_root), "--output", str(output)).returncode == 0
    assert all(f"[{r.run_id}](" in output.read_text() for r in runs)


STEPS = ("train.steps=400", "train.log_every=10", "train.checkpoint_every_steps=100")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root):
    """The uninterrupted run (locally: same world size, same identity) that interrupted ones must equal."""
    runs_root = tmp_path_factory.mktemp("reference")
    local = run_cli("submit", "experiment=random_init", *micro_args(runs_root, data_root), *STEPS)
    assert local.returncode == 0, local.stderr
    (reference,) = find_runs(runs_root)
    return reference


def release_when_requeued(job: str, finished):
    """A poll for wait_until: true once `finished()`; meanwhile a requeued job, held ~120 s by Slurm
    (BeginTime), is released early, but not within the second of the requeue: slurmd compares
    credential times in whole seconds, so a job restarted that soon is killed as "Job credential
    revoked"."""
    pending_since: list[float] = []

    def poll() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
        if "PENDING" in out:
            pending_since.append(pending_since[0] if pending_since else time.time())
            if time.time() - pending_since[0] > 2.5:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        return finished()
    return poll


def start_long_runs(tmp_path: Path, data_root: Path, *extra: str) -> tuple[Path, list[Path]]:
    runs_root = tmp_path / "runs"
    result = run_cli("submit", *slurm_args(runs_root, data_root, "experiment=random_init",
                                           "train.steps=100000", *extra))
    assert result.returncode == 0, result.stderr
    runs = [r.path for r in find_runs(runs_root)]
    wait_until(lambda: all(read_metrics(r / "metrics.jsonl") for r in runs), 120, "training to start")
    return runs_root, runs


def trainer_processes(run_dir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"harness worker {run_dir}"], capture_output=True, text=True).stdout
    return out.split()


def test_cancel_ends_the_array_and_every_trainer(slurm_cluster, tmp_path, data_root):
    runs_root, runs = start_long_runs(tmp_path, data_root, "seed=0,1")
    job = job_id(runs[0]).split("_")[0]
    result = run_cli("cancel", "random_init", "--runs-root", str(runs_root))
    assert result.returncode == 0 and result.stdout.count("cancelled") == 2, result.stdout + result.stderr
    wait_until(lambda: not squeue_ids(job), 60, "squeue to empty")
    for run in runs:
        wait_until(lambda: not trainer_processes(run), 30, f"trainers of {run} to exit")
    status = run_cli("status", "--runs-root", str(runs_root))
    assert status.stdout.count(" cancelled ") == 2, status.stdout


def test_a_rank_killed_on_n2_retries_off_n2_and_finishes_as_if_uninterrupted(slurm_cluster, tmp_path, data_root,
                                                                             reference_run):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", *slurm_args(runs_root, data_root, "experiment=random_init", *STEPS,
                                           "launch.max_failures=1"))
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(runs_root)
    record = wait_until(lambda: rank_record(run.path, 1).get("pid") and rank_record(run.path, 1), 60, "rank 1 to start")
    assert record["node"] == "n2"
    wait_until(lambda: list(run.checkpoints.glob("step*/COMPLETE")), 120, "the first checkpoint")
    os.kill(record["pid"], signal.SIGKILL)

    wait_until(release_when_requeued(job_id(run.path), run.done_path.exists), 300, "the retried job to finish", poll_s=1)
    first, second = run.attempts()
    assert "rank 1 on n2: trainer killed by SIGKILL" in first["cause"]
    assert first["decision"] == "retrying: 1 of 1; excluding n2" and first["exit_reason"].startswith("failed: ")
    assert second["origin"] == "retry" and second["exit_reason"] == "completed" and second["nodes"] == ["n1", "n3"]
    assert "resumed from step" in (run.logs(2) / "rank0.log").read_text()
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(reference_run.metrics_path))
    status = run_cli("status", "--runs-root", str(runs_root))
    row = next(line for line in status.stdout.splitlines() if run.name in line)
    assert " done " in row and " 2 " in row and "attempt 1: rank 1 on n2: trainer killed by SIGKILL" in row, row


def test_sbatch_refusals_exit_2_with_sbatchs_message_and_leave_no_run(slurm_cluster, tmp_path, data_root):
    for bad, message in [("launch.gpus_per_node=4", "Requested node configuration is not available"),
                         ("launch.partition=nope", "invalid partition")]:
        runs_root = tmp_path / bad.split("=")[0]
        result = run_cli("submit", *slurm_args(runs_root, data_root, bad))
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert find_runs(runs_root) == [] and not (runs_root / "random_init").exists()


def test_usr2_checkpoints_requeues_and_resumes_to_the_same_result(slurm_cluster, tmp_path, data_root, reference_run):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", *slurm_args(runs_root, data_root, "experiment=random_init", *STEPS))
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(runs_root)
    job = job_id(run.path)
    wait_until(lambda: read_metrics(run.metrics_path), 120, "training to start")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    wait_until(release_when_requeued(job, run.done_path.exists), 300, "the requeued job to finish", poll_s=1)
    attempts = run.attempts()
    assert len(attempts) == 2 and attempts[0]["exit_reason"] == "preempted: checkpointed; requeued"
    assert attempts[1]["exit_reason"] == "completed" and attempts[1]["job_id"] == attempts[0]["job_id"]
    assert [a["restart_count"] for a in attempts] == [0, 1]
    resumed = (run.logs(2) / "rank0.log").read_text()
    assert "resumed from step" in resumed
    assert rank_record(run.path, 0)["code"] == json.loads((run.logs(2) / "rank0.json").read_text())["code"]
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(reference_run.metrics_path))
