"""What each scheduled task runs on the host: the trainer in a child process (later, inside the
container), with the distributed env set. Rank 0 records the attempt in provenance.json.

This module stays light (no torch import): it is what submitit pickles and runs on every task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from harness.launch.environment import torch_env

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class TrainerFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class RunTask:
    """One attempt of one run. Called once per task (= rank) by submitit."""

    run_dir: str
    attempt: int
    job: str = "train"

    def __call__(self) -> str:
        from harness.rundir import RunDir

        env = submitit.JobEnvironment()
        run = RunDir(Path(self.run_dir))
        dist_env = torch_env(str(env.job_id), env.global_rank, env.local_rank, env.num_tasks,
                             env.num_nodes, list(env.hostnames))
        if env.global_rank == 0:
            run.start_attempt(self.attempt, nodes=list(env.hostnames))
        error_file = run.logs(self.attempt) / f"error.rank{env.global_rank}.txt"
        code = self._run_child(dist_env, error_file)
        reason = "completed" if code == 0 else _failure_reason(code, error_file)
        if env.global_rank == 0:
            if code == 0:
                run.mark_done()
            run.end_attempt(self.attempt, reason)
        if code != 0:
            raise TrainerFailed(f"rank {env.global_rank}: {reason}")
        return self.run_dir

    def command(self, error_file: Path | None = None) -> list[str]:
        extra = ["--error-file", str(error_file)] if error_file else []
        return [sys.executable, "-m", "harness", "worker", self.run_dir, "--job", self.job, *extra]

    def _run_child(self, dist_env: dict[str, str], error_file: Path) -> int:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        child = subprocess.Popen(self.command(error_file), env={**os.environ, **dist_env})
        previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED_SIGNALS}
        try:
            return child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _failure_reason(code: int, error_file: Path) -> str:
    detail = error_file.read_text().strip() if error_file.exists() else "no reason recorded; see the logs"
    return f"failed (trainer exit code {code}): {detail}"
