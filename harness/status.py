"""`harness status`, `logs`, `cancel`: what runs are doing, read from run directories first, then
squeue, then sacct (so it works where accounting is disabled)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from harness.config import load_run_config
from harness.errors import HarnessError
from harness.launch import slurm
from harness.rundir import RunDir, RunState, find_runs, read_metrics


TERMINAL = {"done", "failed", "cancelled", "timeout", "node_fail", "out_of_memory", "preempted",
            "interrupted", "ended"}
SACCT_TO_STATE = {"COMPLETED": "failed", "FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "timeout",
                  "NODE_FAIL": "node_fail", "OUT_OF_MEMORY": "out_of_memory", "PREEMPTED": "preempted",
                  "BOOT_FAIL": "failed", "DEADLINE": "timeout"}
CANCELLED_REASON = "cancelled by harness cancel"


@dataclass(frozen=True)
class StatusRow:
    name: str
    job_id: str
    array_index: str
    state: str
    attempts: int
    step: int | None
    loss: float | None
    metric_age_s: float | None
    note: str


def resolve(runs_root: Path, selector: str | None) -> list[RunDir]:
    """Runs named by `experiment/run_id`, a run id (or unique prefix), an experiment, or a run
    directory's path (as `submit` prints it); all if None."""
    if selector and "/" in selector and (Path(selector) / "config.yaml").exists():
        return [RunDir(Path(selector).resolve())]
    if not runs_root.is_dir():
        what = "is not a directory" if runs_root.exists() else "does not exist"
        raise HarnessError(f"runs root {runs_root} {what} (--runs-root, or paths.runs_root in your defaults)")
    runs = find_runs(runs_root)
    if not selector:
        return runs
    chosen = [r for r in runs if selector in (r.name, r.experiment) or r.run_id.startswith(selector)
              or r.name.startswith(selector)]
    if not chosen:
        raise HarnessError(f"no run matches '{selector}' under {runs_root}")
    return chosen


UNREADABLE = "unreadable"


def status_rows(runs: list[RunDir]) -> list[StatusRow]:
    """One row per run; a run whose files cannot be read gets an `unreadable` row naming the file."""
    open_jobs = [str(a["job_id"]) for r in runs for a in _attempts_or_none(r)[-1:]
                 if a.get("executor") == "slurm" and a.get("job_id") and not a.get("end")]
    queue = slurm.squeue_states(open_jobs)
    rows = []
    for run in runs:
        try:
            rows.append(_row(run, queue))
        except HarnessError as exc:
            rows.append(StatusRow(run.name, "-", "-", UNREADABLE, 0, None, None, None, str(exc)))
    return rows


def _attempts_or_none(run: RunDir) -> list[dict]:
    try:
        return run.attempts()
    except HarnessError:
        return []


def _row(run: RunDir, queue: dict[str, tuple[str, str]] | None) -> StatusRow:
    run.check_config()
    attempts = run.attempts()
    last = attempts[-1] if attempts else {}
    job_id = str(last.get("job_id") or "-")
    state, note = live_state(run, queue)
    metrics = read_metrics(run.metrics_path)
    latest = metrics[-1] if metrics else {}
    age = time.time() - run.metrics_path.stat().st_mtime if metrics else None
    if state == "running" and age is not None:
        stall_s = load_run_config(run.config_path).launch.stall_after_min * 60
        if age > stall_s:
            state, note = "stalled", f"no metric for {age / 60:.0f} min"
    main_id, _, index = job_id.partition("_")
    return StatusRow(run.name, main_id, index or "-", state, len(attempts), latest.get("step"),
                     latest.get("loss"), age, note)


def live_state(run: RunDir, queue: dict[str, tuple[str, str]] | None = None) -> tuple[str, str]:
    """(state, note) of a run: its files decide when they can, then the scheduler."""
    file_state = run.state()
    attempts = run.attempts()
    history = failure_history(attempts)
    if file_state == RunState.DONE:
        return "done", f"after {history}" if history else ""
    if file_state == RunState.NEW or not attempts:
        return "new", ""
    last = attempts[-1]
    reason = run.failure_reason(last["attempt"]) or ""
    if last.get("end"):
        ended = last.get("exit_reason") or ""
        if ended == CANCELLED_REASON:
            return "cancelled", reason
        if ended.startswith("preempted"):
            return "preempted", ended
        return "failed", history if last.get("decision") else reason
    if last.get("executor") != "slurm":
        return ("running", history) if file_state == RunState.RUNNING else ("interrupted", reason)
    job_id = str(last.get("job_id"))
    queue = slurm.squeue_states([job_id]) if queue is None else queue
    if queue is not None and job_id in queue:
        state, nodes = queue[job_id]
        return state.lower(), "; ".join(filter(None, [f"nodes {nodes}" if nodes else "", history]))
    if queue is None:
        return "unknown", "squeue unavailable"
    accounted = slurm.sacct_state(job_id)
    if accounted is None:
        return "ended", reason or "not in squeue; sacct unavailable"
    state, nodes = accounted
    return SACCT_TO_STATE.get(state, state.lower()), reason or f"slurm: {state} on {nodes}"


def failure_history(attempts: list[dict]) -> str:
    """Every failed attempt's cause and what was decided (retry or not), oldest first."""
    failed = [a for a in attempts if a.get("cause")]
    return "; ".join(f"attempt {a['attempt']}: {a['cause']} ({a.get('decision') or 'not retried'})" for a in failed)


def render_table(rows: list[StatusRow]) -> str:
    header = ("run", "job", "idx", "state", "att", "step", "loss", "last metric", "note")
    lines = [header] + [(r.name, r.job_id, r.array_index, r.state, str(r.attempts),
                         "-" if r.step is None else str(r.step), "-" if r.loss is None else f"{r.loss:.4f}",
                         _age(r.metric_age_s), r.note) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def wait_for(runs: list[RunDir], out: TextIO = sys.stdout, poll_s: float = 5.0) -> list[StatusRow]:
    """Block until every run reaches a terminal state; print each change of state."""
    seen: dict[str, str] = {}
    while True:
        rows = status_rows(runs)
        for row in rows:
            if seen.get(row.name) != row.state:
                seen[row.name] = row.state
                print(f"{row.name}: {row.state}" + (f" ({row.note})" if row.note else ""), file=out, flush=True)
        if all(r.state in TERMINAL for r in rows):
            return rows
        time.sleep(poll_s)


def cancel(runs: list[RunDir], out: TextIO = sys.stdout) -> int:
    """Cancel every run's open attempt; returns how many were cancelled."""
    cancelled = 0
    for run in runs:
        attempts = run.attempts()
        if not attempts or attempts[-1].get("end") or run.state() == RunState.DONE:
            continue
        last = attempts[-1]
        job_id = str(last.get("job_id"))
        # Recorded before the signal: the trainer's own ending (killed by SIGTERM) races the cancel,
        # and the first ending recorded wins.
        run.end_attempt(last["attempt"], CANCELLED_REASON)
        try:
            if last.get("executor") == "slurm":
                error = slurm.scancel([job_id])
                if error:
                    raise HarnessError(f"scancel {job_id} failed: {error}")
            else:
                _cancel_local(last)
        except HarnessError:
            run.reopen_attempt(last["attempt"])
            raise
        print(f"{run.name}: cancelled (job {job_id})", file=out)
        cancelled += 1
    return cancelled


def _cancel_local(attempt: dict) -> None:
    """submitit's local controller forwards SIGTERM to its tasks, which forward it to the trainer."""
    if attempt.get("submit_host") != socket.gethostname():
        raise HarnessError(f"job {attempt.get('job_id')} runs on {attempt.get('submit_host')}; cancel it there")
    if attempt.get("end") is None:
        try:
            os.kill(int(attempt["job_id"]), signal.SIGTERM)
        except (ProcessLookupError, ValueError, TypeError):
            pass


def show_logs(run: RunDir, rank: int, follow: bool, out: TextIO = sys.stdout) -> None:
    attempts = run.attempts()
    if not attempts:
        raise HarnessError(f"{run.name} has no attempt yet")
    path = run.logs(attempts[-1]["attempt"]) / f"rank{rank}.log"
    deadline = time.time() + 300
    while not path.exists():
        if not follow or time.time() > deadline:
            raise HarnessError(f"no log yet at {path}")
        time.sleep(1)
    with open(path, errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            elif not follow or live_state(run)[0] in TERMINAL:
                return
            else:
                time.sleep(1)
