"""The run directory: the only interface between jobs and the collector.

    runs/<experiment>/<run_id>/
      config.yaml        resolved config, written once at submit
      provenance.json    code, data, packages, host; one entry per attempt
      submit.sh          the exact script submitted (Slurm); absent for local runs
      logs/<attempt>/    scheduler and trainer logs of each attempt
      metrics.jsonl      one line per logged step
      checkpoints/       model files (final/ at the end)
      eval/              <name>@<step>.json
      DONE               written last, when the run completed
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.config import RunConfig, to_dict
from harness.errors import CHECKPOINTED_EXIT, HarnessError, first_line


RUN_ID = re.compile(r"^[0-9a-f]{10}$")


_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser where built: status reads many runs


class RunState(str, Enum):
    NEW = "new"              # no directory yet
    DONE = "done"
    RUNNING = "running"      # an attempt is pending or running
    FAILED = "failed"        # the last attempt ended without DONE (failed, cancelled, timed out)
    INTERRUPTED = "interrupted"  # an attempt started but its job is gone without an end record


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, runs_root: Path, experiment: str, run_id: str) -> "RunDir":
        return cls(runs_root / experiment / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.run_id}"

    config_path = property(lambda self: self.path / "config.yaml")
    provenance_path = property(lambda self: self.path / "provenance.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    done_path = property(lambda self: self.path / "DONE")

    def logs(self, attempt: int) -> Path:
        return self.path / "logs" / str(attempt)

    # --- writing ---------------------------------------------------------------------------

    def create(self, config: RunConfig, provenance: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.config_path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        if not self.provenance_path.exists():
            self._write_provenance({**provenance, "attempts": []})

    def update_provenance(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write under a lock: the submitter and rank 0 may update it at once."""
        with open(self.path / ".provenance.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            provenance = self.provenance()
            change(provenance)
            self._write_provenance(provenance)
        return provenance

    def add_attempt(self, executor: str, origin: str = "submit") -> int:
        """Recorded by the submitter just before submitting (origin `submit`, or `retry` when it
        restarts a local run itself); returns the attempt number."""
        def append(p: dict[str, Any]) -> None:
            p["attempts"].append(_new_attempt(len(p["attempts"]) + 1, executor, None, origin))
        return self.update_provenance(append)["attempts"][-1]["attempt"]

    def ensure_attempt(self, attempt: int, executor: str, job_id: str, origin: str = "requeue") -> None:
        """Open attempt `attempt` if it is not recorded yet (a job Slurm requeued)."""
        def add(p: dict[str, Any]) -> None:
            if not any(a["attempt"] == attempt for a in p["attempts"]):
                p["attempts"].append(_new_attempt(attempt, executor, job_id, origin))
        self.update_provenance(add)

    def record_failure(self, attempt: int, cause: str, decision: str) -> None:
        """Close a failed attempt with its diagnosed cause and what was done about it
        (harness/launch/retry.py); a later call amends the decision (a requeue that failed)."""
        def change(p: dict[str, Any]) -> None:
            for entry in p["attempts"]:
                if entry["attempt"] == attempt:
                    entry.update(cause=cause, decision=decision, exit_reason=f"failed: {cause}; {decision}",
                                 end=entry.get("end") or utc_now())
        self.update_provenance(change)

    def retries_used(self) -> int:
        """Automatic retries since the run was last submitted by a person (or a script)."""
        used = 0
        for entry in reversed(self.attempts()):
            used += str(entry.get("decision") or "").startswith("retrying")
            if entry.get("origin", "submit") == "submit":
                break
        return used

    def set_job_id(self, attempt: int, job_id: str) -> None:
        self._update_attempt(attempt, job_id=job_id)

    def start_attempt(self, attempt: int, nodes: list[str], restart_count: int = 0) -> None:
        """Recorded by rank 0 when the job starts running; `restart_count`: Slurm requeues of its job."""
        self._update_attempt(attempt, nodes=nodes, start=utc_now(), restart_count=restart_count)

    def end_attempt(self, attempt: int, exit_reason: str) -> None:
        """Close an attempt; the first ending recorded wins (a cancel is not overwritten by the
        failure it causes)."""
        self._update_attempt(attempt, only_open=True, end=utc_now(), exit_reason=exit_reason)

    def reopen_attempt(self, attempt: int) -> None:
        """Undo end_attempt when the cancel it recorded could not be carried out."""
        self._update_attempt(attempt, end=None, exit_reason=None)

    def _update_attempt(self, attempt: int, only_open: bool = False, **fields: Any) -> None:
        def change(p: dict[str, Any]) -> None:
            for entry in p["attempts"]:
                if entry["attempt"] == attempt and not (only_open and entry.get("end")):
                    entry.update(fields)
        self.update_provenance(change)

    def remove_attempt(self, attempt: int) -> None:
        """Undo add_attempt when the scheduler refused the job."""
        self.update_provenance(lambda p: p.update(attempts=[a for a in p["attempts"] if a["attempt"] != attempt]))

    def mark_done(self) -> None:
        self.done_path.write_text(utc_now() + "\n")

    def _write_provenance(self, provenance: dict[str, Any]) -> None:
        partial = self.provenance_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(provenance, indent=1) + "\n")
        os.replace(partial, self.provenance_path)

    # --- reading ---------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        if not self.provenance_path.exists():
            return {}
        try:
            provenance = json.loads(self.provenance_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HarnessError(f"{self.provenance_path}: unreadable ({first_line(exc)}); repair it or move "
                               f"{self.path} aside") from None
        if not isinstance(provenance, dict) or not isinstance(provenance.get("attempts", []), list):
            raise HarnessError(f"{self.provenance_path}: not a run's provenance (no attempts list); repair it "
                               f"or move {self.path} aside")
        return provenance

    def attempts(self) -> list[dict[str, Any]]:
        return self.provenance().get("attempts", [])

    def check_config(self) -> None:
        """Raise naming config.yaml where it cannot be parsed: a cheap YAML read (status reads
        many runs); the typed read is load_run_config's."""
        try:
            loaded = yaml.load(self.config_path.read_text(), Loader=_YAML)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise HarnessError(f"{self.config_path}: unreadable ({first_line(exc)}); repair it or move "
                               f"{self.path} aside") from None
        if not isinstance(loaded, dict):
            raise HarnessError(f"{self.config_path}: not a run config; repair it or move {self.path} aside")

    def rank_records(self, attempt: int) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.logs(attempt).glob("rank*.json")):
            if not re.fullmatch(r"rank\d+\.json", path.name):
                continue
            try:
                records.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return sorted(records, key=lambda r: r["rank"])

    def failure_reason(self, attempt: int) -> str | None:
        """The root cause among an attempt's rank failures, else the recorded reason. A rank ended by
        SIGTERM was usually stopped because another failed (srun --kill-on-bad-exit, scancel), so
        other failures come first; among equals, the earliest."""
        entries = [a for a in self.attempts() if a["attempt"] == attempt]
        if entries and entries[0].get("cause"):
            return entries[0]["cause"]
        failed = [r for r in self.rank_records(attempt) if r.get("exit_code") not in (None, 0, CHECKPOINTED_EXIT)]
        if failed:  # killed by a signal first, then an exit of its own, then stopped by SIGTERM
            return min(failed, key=lambda r: (r["exit_code"] == -signal.SIGTERM, r["exit_code"] >= 0,
                                              r.get("end_ts") or 0))["reason"]
        return entries[0].get("exit_reason") if entries else None

    def failed_nodes(self, attempt: int) -> list[str]:
        """Nodes where a rank of `attempt` failed by itself (not stopped by SIGTERM, not preempted)."""
        stopped = (None, 0, CHECKPOINTED_EXIT, -signal.SIGTERM)
        return sorted({r["node"] for r in self.rank_records(attempt) if r.get("exit_code") not in stopped})

    def state(self) -> RunState:
        if not self.config_path.exists():
            return RunState.NEW
        if self.done_path.exists():
            return RunState.DONE
        attempts = self.attempts()
        if not attempts:
            return RunState.INTERRUPTED
        last = attempts[-1]
        if last["end"] is not None:
            return RunState.FAILED
        return RunState.RUNNING if _alive(last) else RunState.INTERRUPTED


def _alive(attempt: dict[str, Any]) -> bool:
    """Whether an attempt's job may still run: a local controller process, or a Slurm job in squeue."""
    job_id = attempt.get("job_id")
    if job_id is None:
        return True  # submitted just now; the job id is being recorded
    if attempt.get("executor") == "slurm":
        from harness.launch.slurm import job_active

        return job_active(str(job_id))
    if attempt.get("submit_host") != socket.gethostname():
        return True
    try:
        os.kill(int(job_id), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def find_runs(runs_root: Path) -> list[RunDir]:
    """Every run directory under a runs root (set-aside `.replaced-*` copies excluded)."""
    if not runs_root.is_dir():
        return []
    return [RunDir(p) for p in sorted(runs_root.glob("*/*"))
            if p.is_dir() and RUN_ID.match(p.name) and (p / "config.yaml").exists()]


def _new_attempt(number: int, executor: str, job_id: str | None, origin: str) -> dict[str, Any]:
    return {"attempt": number, "job_id": job_id, "executor": executor, "origin": origin,
            "submit_host": socket.gethostname(), "submitted": utc_now(), "nodes": [], "start": None, "end": None,
            "exit_reason": None}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- metrics.jsonl: one JSON object per logged step; `timing` kept apart from result fields ---

TIMING_KEY = "timing"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The readable lines: a line cut by a kill mid-write ends them (the trainer then replays it)."""
    return read_metrics_strict(path)[0]


def read_metrics_strict(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Every line, and the number of the first unreadable one (None if all read): the collector
    must not report a run whose last logged step was cut off as if an earlier step were its end."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records, None
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return records, number
                if not isinstance(record, dict):
                    return records, number
                records.append(record)
    return records, None


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != TIMING_KEY} for r in records]
