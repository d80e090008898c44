"""What each scheduled task runs on the host: a pre-flight check, then the trainer in a child
process with the torch distributed env set (later inside the container). Each rank leaves a record
in logs/<attempt>/rank<r>.json; rank 0 also records the attempt in provenance.json.

This module stays light (no torch import): it is what submitit unpickles on every task.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from harness.config import RunConfig, load_run_config
from harness.errors import CHECKPOINTED_EXIT
from harness.launch import retry, slurm
from harness.launch.container import Wrapper, container_name
from harness.launch.environment import torch_env
from harness.portable_paths import resolve

# Every signal a task receives goes on to the trainer: stop signals, and the preemption warning
# (USR2 by default) on which the trainer checkpoints and exits with CHECKPOINTED_EXIT.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
STAGING_WAIT_S = 3600


class TaskFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class RunTask:
    """One attempt of one run. Called once per task (= rank) by submitit."""

    run_dir: str
    attempt: int

    def __call__(self) -> str:
        from harness.rundir import RunDir

        env = submitit.JobEnvironment()
        run = RunDir(Path(self.run_dir))
        # A job Slurm requeued runs again with the same pickled task: count its restarts.
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        attempt = self.attempt + restarts
        record = RankRecord(run.logs(attempt), env.global_rank, env.local_rank)
        refused = None
        if env.global_rank == 0:
            run.ensure_attempt(attempt, "slurm" if os.environ.get("SLURM_JOB_ID") else "local", str(env.job_id))
            run.start_attempt(attempt, nodes=list(env.hostnames), restart_count=restarts)
            refused = close_lost_attempt(run, self.attempt, attempt) if restarts else None
        try:
            code, reason = (1, refused) if refused else self._run(run, env, record, attempt, restarts)
        except Exception as exc:  # anything before or around the trainer: record it, then fail
            code, reason = 1, f"{record.where}: {type(exc).__name__}: {exc}"
        record.finish(code, reason)
        if env.global_rank == 0:
            if code == 0:
                run.mark_done()
            if code == CHECKPOINTED_EXIT:
                reason = requeue(run, attempt, str(env.job_id))
            elif code != 0 and not refused:
                try:
                    reason = retry_after_failure(run, attempt, str(env.job_id), reason)
                except Exception as exc:  # the failure is still recorded, only without a decision
                    reason = f"{reason}; not retried: no decision ({type(exc).__name__}: {exc})"
            run.end_attempt(attempt, reason)
        if code not in (0, CHECKPOINTED_EXIT):
            raise TaskFailed(reason)
        return self.run_dir

    def _run(self, run, env, record: "RankRecord", attempt: int, restarts: int) -> tuple[int, str]:
        config = load_run_config(run.config_path)
        problem = preflight(config, env.num_tasks, env.num_nodes, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if problem:
            return 1, f"pre-flight failed on node {record.node} (rank {env.global_rank}): {problem}"
        # A requeued job keeps its id: a new port per restart, so no socket of the last one is in the way.
        extra_env = torch_env(f"{env.job_id}/{restarts}", env.global_rank, env.local_rank, env.num_tasks,
                              env.num_nodes, list(env.hostnames))
        extra_env["HARNESS_ATTEMPT"] = str(attempt)
        data_root = config.paths.data_root
        if config.launch.scratch and config.job == "train":  # a tokenize job writes the dataset
            data_root = extra_env["HARNESS_DATA_ROOT"] = stage_dataset(
                run, config.paths.data_root, config.launch.scratch, env.local_rank)
        wrapper = self._wrapper(config, data_root, str(env.job_id), env.global_rank)
        code = self._run_child(extra_env, record, wrapper)
        if code == CHECKPOINTED_EXIT:
            return code, "preempted: checkpointed"
        return code, "completed" if code == 0 else record.failure(code)

    def worker_args(self, error_file: Path | None = None) -> list[str]:
        extra = ["--error-file", str(error_file)] if error_file else []
        return ["worker", self.run_dir, *extra]

    def command(self, env: dict[str, str], error_file: Path | None = None,
                wrapper: Wrapper | None = None) -> list[str]:
        """The trainer's command: this Python on the host, or `harness` inside the container."""
        if wrapper is None:
            return [sys.executable, "-m", "harness", *self.worker_args(error_file)]
        return wrapper.wrap(self.worker_args(error_file), env)

    def _wrapper(self, config: RunConfig, data_root: str, job_id: str, rank: int) -> Wrapper | None:
        code = str(Path(__file__).resolve().parents[2])  # this task imports the run's snapshot
        return task_wrapper(config, data_root, code, container_name(job_id, os.environ.get("SLURM_STEP_ID", "0"), rank))

    def _run_child(self, extra_env: dict[str, str], record: "RankRecord", wrapper: Wrapper | None) -> int:
        env = {**os.environ, **extra_env}
        with open(record.log_path, "ab") as log:
            child = subprocess.Popen(self.command(env, record.error_path, wrapper), env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
            record.start(child.pid, wrapper.name if wrapper else None)
            # Signals go to the trainer (through `docker run`'s proxy and --init, or apptainer).
            previous = {sig: signal.signal(sig, lambda s, _f: _forward(child, record, s)) for sig in FORWARDED_SIGNALS}
            try:
                return child.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                if wrapper is not None:
                    wrapper.remove()


def _forward(child: subprocess.Popen, record: "RankRecord", signum: int) -> None:
    record.note_signal(signum)
    child.send_signal(signum)


def task_wrapper(config: RunConfig, data_root: str, code: str, name: str) -> Wrapper | None:
    """The container a task's trainer runs in (None: on the host), binding the data and runs roots."""
    if config.container.runtime == "none":
        return None
    return Wrapper(config.container, (data_root, config.paths.runs_root), code, name,
                   gpus=config.launch.gpus_per_node > 0)


def requeue(run, attempt: int, job_id: str) -> str:
    """After a checkpointed exit: put the same Slurm job back in the queue (from the host, so the
    container needs no scontrol) and open the next attempt, unless max_attempts is reached."""
    config = load_run_config(run.config_path)
    if not os.environ.get("SLURM_JOB_ID"):
        return "preempted: checkpointed; resubmit to resume"
    if attempt >= config.launch.max_attempts:
        return f"preempted: checkpointed; not requeued (launch.max_attempts={config.launch.max_attempts})"
    error = slurm.requeue(job_id)
    if error:
        return f"preempted: checkpointed; requeue failed ({error})"
    run.ensure_attempt(attempt + 1, "slurm", job_id)
    return "preempted: checkpointed; requeued"


def retry_after_failure(run, attempt: int, job_id: str, reason: str) -> str:
    """Rank 0, after its attempt failed: diagnose the cause from every rank's record and, on Slurm,
    requeue the job when a retry can cure it (launch.max_failures). Local runs are restarted by
    `harness submit`, which reads the decision recorded here. Returns the attempt's exit reason."""
    if any(a["attempt"] == attempt and a.get("end") for a in run.attempts()):
        return reason  # cancelled: the first ending recorded stands
    config = load_run_config(run.config_path)
    on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    # Locally too: the other ranks record their end a moment after rank 0 sees the failure.
    records = retry.wait_for_records(lambda: run.rank_records(attempt), config.world_size)
    diagnosis = retry.diagnose(records, config.world_size)
    excluded = (slurm.excluded_nodes(job_id) or []) if on_slurm else []
    usable = (lambda: _still_usable(config.launch.partition, excluded)) if on_slurm else None
    decision = retry.decide(diagnosis, run.retries_used(), config.launch, usable)
    # Recorded (and the attempt closed) before the requeue, which starts tearing this job down.
    run.record_failure(attempt, diagnosis.cause, decision.text)
    if decision.retry and on_slurm:
        requeued = _requeue_for_retry(run, attempt, job_id, decision, excluded)
        if requeued.text != decision.text:
            run.record_failure(attempt, diagnosis.cause, requeued.text)
        decision = requeued
    return f"failed: {diagnosis.cause}; {decision.text}"


def _still_usable(partition: str | None, excluded: list[str]) -> list[str] | None:
    nodes = slurm.usable_nodes(partition)
    return None if nodes is None else [n for n in nodes if n not in excluded]


def _requeue_for_retry(run, attempt: int, job_id: str, decision: retry.Decision,
                       excluded: list[str]) -> retry.Decision:
    error = slurm.requeue(job_id)
    if error:
        return retry.Decision(False, f"not retried: requeue failed ({error})")
    text = decision.text
    if decision.exclude:  # ExcNodeList replaces the list: keep what the job was already kept off
        error = slurm.exclude_nodes(job_id, sorted({*excluded, *decision.exclude}))
        if error:
            text = text.replace(f"excluding {', '.join(decision.exclude)}", f"could not exclude nodes ({error})")
    run.ensure_attempt(attempt + 1, "slurm", job_id, origin="retry")
    return retry.Decision(True, text, decision.exclude)


def close_lost_attempt(run, first_attempt: int, attempt: int) -> str | None:
    """Rank 0, starting an attempt of a job Slurm restarted: an earlier attempt of this job left
    open was lost with it (Slurm requeued it after a node failure, or preempted it). Record it;
    return why this attempt must not run when a failure exhausts launch.max_failures."""
    lost = [a for a in run.attempts() if first_attempt <= a["attempt"] < attempt and not a.get("end")]
    if not lost:
        return None
    config = load_run_config(run.config_path)
    refusal = None
    for entry in lost:
        records = run.rank_records(entry["attempt"])
        if any(r.get("exit_code") == CHECKPOINTED_EXIT for r in records):
            run.end_attempt(entry["attempt"], "preempted: checkpointed; requeued by Slurm")
            continue  # a preemption, not a failure: it costs no retry
        diagnosis = retry.diagnose([r for r in records if r.get("exit_code") is not None] or records,
                                   config.world_size)
        cause = f"its job was requeued by Slurm (node failure or preemption?); {diagnosis.cause}"
        decision = retry.decide(retry.Diagnosis(cause, True), run.retries_used(), config.launch)
        run.record_failure(entry["attempt"], cause, decision.text)
        if not decision.retry:
            refusal = f"not started: attempt {entry['attempt']} {cause}; {decision.text}"
    return refusal


class RankRecord:
    """logs/<attempt>/rank<r>.json: where a rank ran and how it ended; rank<r>.log: its output."""

    def __init__(self, directory: Path, rank: int, local_rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"rank{rank}.json"
        self.log_path = directory / f"rank{rank}.log"
        self.error_path = directory / f"rank{rank}.error"
        self.node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.values = {"rank": rank, "local_rank": local_rank, "node": self.node, "host": socket.gethostname(),
                       "code": str(Path(__file__).resolve().parents[2]), "pid": None, "start": _now(), "end": None, "exit_code": None, "reason": None}
        self._write()

    def start(self, pid: int, container: str | None) -> None:
        self.values.update(pid=pid, container=container)
        self._write()

    @property
    def where(self) -> str:
        return f"rank {self.values['rank']} on {self.node}"

    def note_signal(self, signum: int) -> None:
        self.values.setdefault("signals", []).append({"signal": signal.Signals(signum).name, "time": _now()})
        self._write()

    def finish(self, code: int, reason: str) -> None:
        self.values.update(end=_now(), end_ts=time.time(), exit_code=code, reason=reason)
        self._write()

    def failure(self, code: int) -> str:
        where = self.where
        # The trainer's own reason, when it wrote one, says more than a signal during teardown.
        reason = self.error_path.read_text().strip() if self.error_path.exists() else None
        if code < 0:
            killed = f"{where}: trainer killed by {signal.Signals(-code).name}"
            return f"{killed} after: {reason}" if reason else killed
        return f"{where}: trainer exit code {code}: {reason or f'see {self.log_path}'}"

    def _write(self) -> None:
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.values) + "\n")
        os.replace(partial, self.path)


def preflight(config: RunConfig, num_tasks: int, num_nodes: int, visible_gpus: str | None) -> str | None:
    """Why this allocation does not match the run's profile, or None when it does."""
    launch = config.launch
    if num_tasks != config.world_size:
        return f"{num_tasks} tasks in the job, the run's world size is {config.world_size}"
    if num_nodes != launch.nodes:
        return f"{num_nodes} nodes in the job, the profile asks for {launch.nodes}"
    if launch.gpus_per_node:
        visible = [g for g in (visible_gpus or "").split(",") if g.strip()]
        if len(visible) != launch.gpus_per_node:
            return f"{len(visible)} visible GPU(s) ({visible_gpus!r}), the profile expects {launch.gpus_per_node}"
    return None


def stage_dataset(run, data_root: str, scratch: str, local_rank: int) -> str:
    """Copy the run's dataset to node-local scratch once per node (again only if its manifest
    changed); return the scratch data root. Other ranks of the node wait for the copy."""
    recorded = run.provenance()["data"]["root"]
    source = resolve(recorded, data_root)
    if not source.is_dir():  # an absolute root recorded before the data root moved
        source = Path(data_root) / Path(recorded).name
    root = Path(os.path.expandvars(scratch))
    target = root / source.name
    manifest = (source / "manifest.json").read_bytes()

    def staged() -> bool:
        return (target / "manifest.json").exists() and (target / "manifest.json").read_bytes() == manifest

    if local_rank == 0 and not staged():
        staging = root / f"{source.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        stale = root / f"{source.name}.stale-{os.getpid()}"
        if target.exists():  # set aside, never delete in place: another job may still read it
            target.rename(stale)
        staging.rename(target)
    deadline = time.time() + STAGING_WAIT_S
    while not staged():
        if time.time() > deadline:
            raise TaskFailed(f"dataset staging to {target} did not finish")
        time.sleep(1)
    return str(root)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
