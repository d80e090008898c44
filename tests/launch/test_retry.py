"""Failed attempts that retry themselves: the diagnosis of a cause, the bounded decision, and a local
run whose rank is killed mid-run finishing by itself with the same metrics as an uninterrupted one.
(On the CI Slurm cluster: tests/launch/test_slurm_cluster.py.)"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config import compose_runs
from harness.launch.retry import Diagnosis, decide, diagnose
from harness.rundir import RunDir, find_runs, read_metrics, without_timing
from tests.conftest import micro_args, run_cli


def rank(r: int, code, reason: str = "", node: str = "n1", end_ts: float = 0.0, **extra) -> dict:
    return {"rank": r, "node": node, "exit_code": code, "reason": reason, "end_ts": end_ts, **extra}


@pytest.mark.parametrize("records, cause, curable, nodes", [
    ([rank(0, -15, "rank 0 on n1: trainer killed by SIGTERM", end_ts=2),
      rank(1, -9, "rank 1 on n2: trainer killed by SIGKILL", node="n2", end_ts=1)],
     "rank 1 on n2: trainer killed by SIGKILL", True, ("n2",)),
    ([rank(0, 1, "RuntimeError: Connection closed by peer", end_ts=1),
      rank(1, -9, "rank 1 on n2: trainer killed by SIGKILL", node="n2", end_ts=2)],
     "rank 1 on n2: trainer killed by SIGKILL", True, ("n2",)),  # the symptom does not hide the kill
    ([rank(0, 137, "rank 0 on n1: trainer exit code 137", container="c")], "exit code 137", True, ("n1",)),
    ([rank(0, -15, "stopped"), rank(1, None, node="n2")], "rank 1 on n2: ended without a record", True, ("n2",)),
    ([rank(0, -15, "stopped")], "rank(s) 1 never started", True, ()),
    ([rank(0, 1, "DistBackendError: NCCL error in: ProcessGroupNCCL.cpp, unhandled system error"), rank(1, -15)],
     "NCCL error", True, ()),
    ([rank(0, 1, "RuntimeError: Watchdog caught collective operation timeout"), rank(1, -15)], "Watchdog", True, ()),
    ([rank(0, -15, "stopped"), rank(1, -15, "stopped")], "stopped by SIGTERM/SIGINT", False, ()),
    ([rank(0, 2, "harness: bad shard"), rank(1, -15)], "bad shard", False, ()),
    ([rank(0, 1, "NonFiniteLoss: non-finite loss (nan) at step 3"), rank(1, 1, "Connection closed by peer")],
     "non-finite loss", False, ()),
    ([rank(0, 1, "pre-flight failed on node n1 (rank 0): 1 nodes in the job"), rank(1, -15)], "pre-flight", False, ()),
    ([rank(0, 1, "KeyError: 'image'"), rank(1, -15)], "KeyError", False, ()),
    ([rank(0, 2, "harness: bad shard"), rank(1, None, node="n2")], "bad shard", False, ()),  # peer still hung
    ([rank(0, 1, "DistBackendError: NCCL error"), rank(1, None, node="n2")], "rank 1 on n2: ended without", True,
     ("n2",)),  # the lost peer is the cause of the NCCL error
    ([rank(1, 1, "ValueError: shapes differ", end_ts=1),
      rank(0, 1, "RuntimeError: Watchdog caught collective operation timeout", end_ts=9)], "ValueError", False, ()),
])
def test_a_cause_is_diagnosed_from_every_ranks_record(records, cause, curable, nodes):
    diagnosis = diagnose(records, world_size=2)
    assert cause in diagnosis.cause and diagnosis.curable is curable and diagnosis.nodes == nodes


def launch(**changes):
    config = compose_runs(["cluster=slurm_ci", "scale=micro"])[0].config
    return dataclasses.replace(config.launch, **changes)


def test_retries_are_bounded_and_exclude_a_failed_node_only_when_nodes_remain():
    killed = Diagnosis("rank 1 on n2: trainer killed by SIGKILL", True, ("n2",))
    three, two = (lambda: ["n1", "n2", "n3"]), (lambda: ["n1", "n2"])
    assert decide(killed, 0, launch(max_failures=0), three).text == "not retried (launch.max_failures=0)"
    first = decide(killed, 0, launch(max_failures=3), three)
    assert first.retry and first.text == "retrying: 1 of 3; excluding n2" and first.exclude == ("n2",)
    assert decide(killed, 2, launch(max_failures=3), two).text == "retrying: 3 of 3; not excluding n2 (no nodes to spare)"
    # usable_nodes leaves out what the job is already kept off (here n3): n1 alone cannot hold 2 nodes
    assert decide(killed, 1, launch(max_failures=3, exclude="n3"), two).exclude == ()
    assert decide(killed, 1, launch(max_failures=3, exclude_failed_nodes=False), three).text == "retrying: 2 of 3"
    exhausted = decide(killed, 3, launch(max_failures=3), three)
    assert not exhausted.retry and exhausted.text == "retries exhausted (3 of 3)"
    assert not decide(Diagnosis("KeyError", False), 0, launch(max_failures=3), three).retry
    assert decide(killed, 0, launch(max_failures=1), None).text == "retrying: 1 of 1"  # local: no nodes


def test_retries_are_counted_since_the_last_submit(tmp_path):
    run = RunDir(tmp_path / "random_init" / "0123456789")
    run.path.mkdir(parents=True)
    attempts = [{"attempt": 1, "origin": "submit", "decision": "retrying: 1 of 3"},
                {"attempt": 2, "origin": "retry", "decision": "retries exhausted"},
                {"attempt": 3, "origin": "submit", "decision": "retrying: 1 of 3"},
                {"attempt": 4, "origin": "requeue"},  # a preemption in between
                {"attempt": 5, "origin": "retry", "decision": "retrying: 2 of 3"},
                {"attempt": 6, "origin": "retry"}]
    run.provenance_path.write_text(json.dumps({"attempts": attempts}))
    assert run.retries_used() == 2
    run.provenance_path.write_text(json.dumps({"attempts": attempts[:3] + [{"attempt": 7}]}))  # written before origins
    assert run.retries_used() == 0


def test_a_restarted_job_closes_only_its_own_lost_attempts_and_a_preemption_costs_no_retry(tmp_path):
    from harness.config import to_dict
    from harness.errors import CHECKPOINTED_EXIT
    from harness.launch.task import close_lost_attempt

    run = RunDir(tmp_path / "random_init" / "0123456789")
    run.path.mkdir(parents=True)
    config = compose_runs(["scale=micro", "launch.max_failures=1"])[0].config
    run.config_path.write_text(yaml.safe_dump(to_dict(config)))
    attempts = [{"attempt": 1, "origin": "submit", "job_id": "100"},  # another job's, left open
                {"attempt": 2, "origin": "submit", "job_id": "200"},  # this job: preempted, Slurm requeued
                {"attempt": 3, "origin": "requeue", "job_id": "200"},  # this job: a node died
                {"attempt": 4, "origin": "requeue", "job_id": "200"}]
    run.provenance_path.write_text(json.dumps({"attempts": attempts}))
    for attempt, codes in ((2, (CHECKPOINTED_EXIT, CHECKPOINTED_EXIT)), (3, (-15, -9))):
        run.logs(attempt).mkdir(parents=True)
        for r, code in enumerate(codes):
            (run.logs(attempt) / f"rank{r}.json").write_text(json.dumps(rank(r, code, node=f"n{r + 1}")))

    assert close_lost_attempt(run, first_attempt=2, attempt=4) is None
    one, two, three, _ = run.attempts()
    assert "end" not in one
    assert two["exit_reason"] == "preempted: checkpointed; requeued by Slurm" and "decision" not in two
    assert three["decision"] == "retrying: 1 of 1" and "rank 1 on n2" in three["cause"] and three["end"]
    assert run.retries_used() == 1


STEPS = ("train.steps=120", "train.log_every=10", "train.checkpoint_every_steps=20")


def test_a_local_rank_killed_mid_run_is_retried_and_ends_as_if_uninterrupted(tmp_path, data_root):
    reference_root, runs_root = tmp_path / "reference", tmp_path / "runs"
    assert run_cli("submit", *micro_args(reference_root, data_root, *STEPS)).returncode == 0
    command = [sys.executable, "-m", "harness", "submit", *micro_args(runs_root, data_root, *STEPS, "launch.max_failures=1")]
    submitter = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rank1 = runs_root / "random_init"
        deadline = time.time() + 120
        while not list(rank1.glob("*/checkpoints/step*/COMPLETE")) and time.time() < deadline:
            time.sleep(0.2)
        (record,) = rank1.glob("*/logs/1/rank1.json")
        os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
        out, err = submitter.communicate(timeout=300)
    finally:
        submitter.kill()
    assert submitter.returncode == 0, err
    assert "attempt 1 failed: rank 1 on" in out and "trainer killed by SIGKILL; retrying: 1 of 1" in out, out
    (run,) = find_runs(runs_root)
    first, second = run.attempts()
    assert first["decision"] == "retrying: 1 of 1" and second["origin"] == "retry" and second["exit_reason"] == "completed"
    assert "resumed from step" in (run.logs(2) / "rank0.log").read_text()
    (reference,) = find_runs(reference_root)
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(reference.metrics_path))
    status = run_cli("status", "--runs-root", str(runs_root))
    assert " done " in status.stdout and "after attempt 1: rank 1 on" in status.stdout, status.stdout
