"""Which failed attempts retry themselves, and how (launch.max_failures).

A failure is diagnosed from the attempt's rank records (logs/<attempt>/rank<r>.json). What a retry
can cure: a rank killed by a signal (a lost process, the OOM killer, a dying node), a rank whose
task never recorded an end (its node went with it), a collective timeout or a communication error
(NCCL, gloo). What it cannot: bad input (exit 2), a non-finite loss, a failed pre-flight check, any
other exception (the same code on the same data fails the same way). SIGTERM alone is a stop
request (scancel, srun ending a step whose peer failed), never a cause.

On Slurm, rank 0's host task decides as its job ends, requeues the job (scontrol requeue) and keeps
the next attempt off the node that failed when the partition has nodes to spare; locally,
`harness submit` starts the next attempt. Either way it resumes from the newest complete
checkpoint, and the cause and the decision are recorded on the attempt in provenance.json.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.config.schema import LaunchConfig
from harness.errors import CHECKPOINTED_EXIT

# A rank's one-line reason that names a collective or communication failure.
COMMUNICATION = re.compile(
    r"NCCL|collective operation|Watchdog caught|DistNetworkError|DistBackendError|timed out|"
    r"Timed out|Connection (reset|closed|refused)|Broken pipe|Socket Timeout|ProcessGroupGloo", re.IGNORECASE)
# Causes no retry can cure, recognised by the reason the trainer or the task recorded.
NOT_CURABLE = re.compile(r"pre-flight failed|non-finite loss|NonFiniteLoss")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
USAGE_EXIT = 2  # a HarnessError (bad input) in the trainer
RECORD_GRACE_S = 5.0  # within Slurm's KillWait: rank 0's host task is stopped soon after its step


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    curable: bool
    nodes: tuple[str, ...] = ()  # where the failure happened (the next attempt avoids them)


@dataclass(frozen=True)
class Decision:
    retry: bool
    text: str                     # "retrying: 1 of 3; excluding n2", "not retried: ..."
    exclude: tuple[str, ...] = field(default=())


def killed_by(record: dict) -> signal.Signals | None:
    """The signal that ended a rank's trainer (a container client reports 128 + N)."""
    code = record.get("exit_code")
    if not isinstance(code, int):
        return None
    number = -code if code < 0 else code - 128 if record.get("container") and 128 < code < 160 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def diagnose(records: list[dict], world_size: int) -> Diagnosis:
    """The root cause of a failed attempt and whether a retry can cure it."""
    def where(r: dict) -> str:
        return f"rank {r['rank']} on {r.get('node', '?')}"

    failed = [r for r in records if r.get("exit_code") not in (0, CHECKPOINTED_EXIT)]
    killed = [r for r in failed if (s := killed_by(r)) is not None and s not in STOP_SIGNALS]
    if killed:
        first = min(killed, key=lambda r: r.get("end_ts") or 0)
        return Diagnosis(first.get("reason") or f"{where(first)}: killed by {killed_by(first).name}", True,
                         tuple(sorted({r.get("node", "?") for r in killed})))
    # A rank's own error comes before its peers' silence: they may still hang in a collective, or
    # be removing a container, when the grace ends.
    own = [r for r in failed if r.get("exit_code") is not None and killed_by(r) is None]
    if own:
        first = min(own, key=lambda r: r.get("end_ts") or 0)
        reason = first.get("reason") or f"{where(first)}: exit code {first.get('exit_code')}"
        curable = (first.get("exit_code") != USAGE_EXIT and not NOT_CURABLE.search(reason)
                   and bool(COMMUNICATION.search(reason)))  # the first to fail: its peers' timeouts follow
        if not curable:
            return Diagnosis(reason, False)
    unended = [r for r in failed if r.get("exit_code") is None]
    if unended:
        return Diagnosis(f"{', '.join(where(r) for r in unended)}: ended without a record (task or node lost)",
                         True, tuple(sorted({r.get("node", "?") for r in unended})))
    missing = sorted(set(range(world_size)) - {r["rank"] for r in records})
    if missing:
        return Diagnosis(f"rank(s) {', '.join(map(str, missing))} never started", True)
    if own:
        return Diagnosis(reason, True)
    return Diagnosis(f"{', '.join(where(r) for r in failed) or 'every rank'}: stopped by "
                     f"{'/'.join(s.name for s in STOP_SIGNALS)} (cancelled or stopped)", False)


def decide(diagnosis: Diagnosis, retries_used: int, launch: LaunchConfig,
           usable_nodes: Callable[[], list[str] | None] | None = None) -> Decision:
    """Retry or not, within launch.max_failures; `usable_nodes` (Slurm only: the partition's nodes
    the job may still use) tells whether it can run without the failed nodes."""
    if not diagnosis.curable:
        return Decision(False, "not retried: a retry cannot cure this cause")
    if retries_used >= launch.max_failures:
        if launch.max_failures == 0:
            return Decision(False, "not retried (launch.max_failures=0)")
        return Decision(False, f"retries exhausted ({retries_used} of {launch.max_failures})")
    text = f"retrying: {retries_used + 1} of {launch.max_failures}"
    exclude = _exclusion(diagnosis, launch, usable_nodes)
    if exclude:
        text += f"; excluding {', '.join(exclude)}"
    elif diagnosis.nodes and usable_nodes is not None and launch.exclude_failed_nodes:
        text += f"; not excluding {', '.join(diagnosis.nodes)} (no nodes to spare)"
    return Decision(True, text, exclude)


def _exclusion(diagnosis: Diagnosis, launch: LaunchConfig,
               usable_nodes: Callable[[], list[str] | None] | None) -> tuple[str, ...]:
    if usable_nodes is None or not launch.exclude_failed_nodes or not diagnosis.nodes:
        return ()
    nodes = usable_nodes()
    if nodes is None:
        return ()
    left = set(nodes) - set(diagnosis.nodes)  # `usable_nodes` leaves out the nodes already excluded
    return tuple(diagnosis.nodes) if len(left) >= launch.nodes else ()


def wait_for_records(read: Callable[[], list[dict]], world_size: int, grace_s: float = RECORD_GRACE_S) -> list[dict]:
    """The attempt's rank records once every rank has recorded its end, or what is there after
    `grace_s` (a lost node's rank never records one)."""
    deadline = time.time() + grace_s
    while True:
        records = read()
        ended = [r for r in records if r.get("exit_code") is not None]
        if len(ended) >= world_size or time.time() >= deadline:
            return records
        time.sleep(0.2)
