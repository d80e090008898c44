"""Status from run directories first, then the scheduler; stalled runs; the root cause of a failure."""

import json
import os
import socket
import time

import pytest

from harness.config import compose_runs
from harness.launch import slurm
from harness.rundir import RunDir
from harness.status import live_state, render_table, resolve, status_rows


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "random_init" / "0123456789")
    run.create(compose_runs(["launch.stall_after_min=1"])[0].config, {"data": {}})
    return run


def add_attempt(run: RunDir, executor: str, job_id: str) -> int:
    attempt = run.add_attempt(executor)
    run.set_job_id(attempt, job_id)
    run.start_attempt(attempt, nodes=[socket.gethostname()])
    return attempt


def write_metric(run: RunDir, step: int, age_s: float) -> None:
    run.metrics_path.write_text(json.dumps({"step": step, "loss": 1.5, "timing": {}}) + "\n")
    past = time.time() - age_s
    os.utime(run.metrics_path, (past, past))


def test_a_live_local_run_is_running_then_stalled(run):
    add_attempt(run, "local", str(os.getpid()))
    write_metric(run, 7, age_s=5)
    (row,) = status_rows([run])
    assert (row.state, row.step, row.loss) == ("running", 7, 1.5)
    write_metric(run, 7, age_s=120)
    (row,) = status_rows([run])
    assert row.state == "stalled" and "no metric for 2 min" in row.note


def test_a_slurm_job_gone_from_squeue_uses_sacct_then_degrades(run, monkeypatch):
    add_attempt(run, "slurm", "77_1")
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {})
    monkeypatch.setattr(slurm, "sacct_state", lambda job: ("TIMEOUT", "n[1-2]"))
    assert live_state(run) == ("timeout", "slurm: TIMEOUT on n[1-2]")
    monkeypatch.setattr(slurm, "sacct_state", lambda job: None)  # accounting disabled
    assert live_state(run) == ("ended", "not in squeue; sacct unavailable")
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: {"77_1": ("PENDING", "")})
    row = status_rows([run])[0]
    assert (row.job_id, row.array_index, row.state) == ("77", "1", "pending")


def test_the_root_cause_is_the_rank_that_did_not_die_of_sigterm(run):
    attempt = add_attempt(run, "slurm", "5")
    logs = run.logs(attempt)
    logs.mkdir(parents=True)
    for rank, code, reason, end_ts in [(0, -15, "rank 0 on n1: trainer killed by SIGTERM", 1.0),
                                       (1, -9, "rank 1 on n2: trainer killed by SIGKILL", 2.0)]:
        (logs / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "exit_code": code, "reason": reason, "end": "t", "end_ts": end_ts}))
    run.end_attempt(attempt, "rank 0 on n1: trainer killed by SIGTERM")
    assert live_state(run) == ("failed", "rank 1 on n2: trainer killed by SIGKILL")
    assert "rank 1 on n2" in render_table(status_rows([run]))


def test_resolve_by_name_id_prefix_or_experiment(run, tmp_path):
    runs_root = tmp_path
    assert resolve(runs_root, "random_init") == [run]
    assert resolve(runs_root, "01234") == [run]
    assert resolve(runs_root, "random_init/0123456789") == [run]
    with pytest.raises(Exception, match="no run matches 'nope'"):
        resolve(runs_root, "nope")


def test_a_done_run_is_done_whatever_the_scheduler_says(run, monkeypatch):
    add_attempt(run, "slurm", "9")
    run.mark_done()
    monkeypatch.setattr(slurm, "squeue_states", lambda ids: pytest.fail("asked the scheduler"))
    assert live_state(run) == ("done", "")




def test_a_resubmitted_failed_slurm_run_avoids_the_node_that_failed(run):
    import io

    from harness.plan import PlannedRun
    from harness.submit import _avoid_failed_nodes

    attempt = add_attempt(run, "slurm", "5")
    logs = run.logs(attempt)
    logs.mkdir(parents=True)
    for rank, node, code in [(0, "n1", -15), (1, "n2", -9)]:
        (logs / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "node": node, "exit_code": code}))
    assert run.failed_nodes(attempt) == ["n2"]
    config = compose_runs(["cluster=slurm_ci", "launch.exclude=n7"])[0].config
    out = io.StringIO()
    planned = _avoid_failed_nodes(PlannedRun(config, (), run, data={}), out)
    assert planned.config.launch.exclude == "n2,n7" and "excluding node(s) n2" in out.getvalue()
