"""Preemption: a signal only sets a flag; ranks agree on flags at step boundaries.

Slurm (or submitit's local controller) sends the preemption signal before a time limit, and an
operator can send it with `scancel --signal=USR2`. It may reach one rank or all of them: the
all-reduce at the next step boundary makes every rank see it, so they checkpoint together and exit
with CHECKPOINTED_EXIT, which the host side turns into a requeue.
"""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from harness.errors import CHECKPOINTED_EXIT

__all__ = ["CHECKPOINTED_EXIT", "StopFlag", "agree"]


class StopFlag:
    def __init__(self, signal_name: str) -> None:
        self.requested = False
        signal.signal(getattr(signal, f"SIG{signal_name}"), self._set)
        # Test hook: HARNESS_PREEMPT_AT_STEP=<n> acts as if the signal arrived during step n.
        self.at_step = int(os.environ.get("HARNESS_PREEMPT_AT_STEP") or 0)

    def _set(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def check(self, step: int) -> bool:
        return self.requested or step == self.at_step


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Every rank gets the OR of every rank's flags (one all-reduce)."""
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]
