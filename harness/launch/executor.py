"""submitit executors from a run's launch settings."""

from __future__ import annotations

from pathlib import Path

import submitit

from harness.config.schema import LaunchConfig
from harness.errors import HarnessError

# submitit signals a job this long before its time limit (USR2); the trainer checkpoints on it.
SIGNAL_DELAY_S = 120


def make_executor(launch: LaunchConfig, folder: Path) -> submitit.Executor:
    if launch.executor == "local":
        if launch.nodes != 1:
            raise HarnessError(f"launch.nodes={launch.nodes}: the local executor runs on one node")
        # submitit's local default is a 2-minute timeout, which would "preempt" a smoke run.
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(tasks_per_node=launch.tasks_per_node, timeout_min=launch.timeout_min,
                                   signal_delay_s=SIGNAL_DELAY_S)
        return executor
    raise HarnessError(f"launch.executor={launch.executor}: not available yet (cluster '{launch.cluster}')")
