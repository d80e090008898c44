"""Wrap a task's trainer command in a container runtime.

submitit's worker stays on the host; each task runs `<runtime> ... harness worker <run_dir>` so host
and image need not share a Python, and only the host needs Slurm's tools. Paths are bound at the
same place inside as outside (the run's config names host paths): the data root, the runs root
(which holds the run directory and the frozen code snapshot the job imports) and any extra binds.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Mapping

from harness.config.schema import ContainerConfig

# Variables a trainer needs from its task, passed by name into docker/podman (apptainer inherits).
PASSED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "CUDA_VISIBLE_DEVICES", "HARNESS_DATA_ROOT", "HARNESS_ATTEMPT", "SLURM_JOB_ID",
              "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURMD_NODENAME",
              "NCCL_DEBUG", "NCCL_IB_DISABLE", "NCCL_SOCKET_IFNAME", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class Wrapper:
    container: ContainerConfig
    binds: tuple[str, ...]       # host paths (or src:dst) to bind
    code: str                    # the run's code snapshot (a directory under a bound root)
    name: str                    # unique per job/step/rank, for docker/podman
    gpus: bool

    def wrap(self, worker_args: list[str], env: Mapping[str, str]) -> list[str]:
        """The full command for `harness <worker_args>` under this runtime; `env` is the
        environment the runtime's client starts with (variables are passed through by name)."""
        runtime = self.container.runtime
        inside = {"PYTHONPATH": self.code, "PYTHONSAFEPATH": "1",
                  "HARNESS_CONTAINER": f"{runtime}:{self.container.image}"}
        if runtime == "apptainer":
            return ["apptainer", "exec", *(["--nv"] if self.gpus else []),
                    "--bind", ",".join(_bind(b) for b in self.all_binds()),
                    "--env", ",".join(f"{k}={v}" for k, v in inside.items()),
                    self.container.image, "harness", *worker_args]
        if runtime in ("docker", "podman"):
            mounts = [arg for b in self.all_binds() for arg in ("-v", _bind(b))]
            passed = [arg for name in PASSED_ENV if name in env for arg in ("-e", name)]
            set_inside = [arg for k, v in {**inside, "HOME": "/tmp"}.items() for arg in ("-e", f"{k}={v}")]
            return [runtime, "run", "--rm", "--init", "--name", self.name, "--network=host", "--ipc=host",
                    "--user", f"{os.getuid()}:{os.getgid()}", *(["--gpus", "all"] if self.gpus else []),
                    *mounts, *passed, *set_inside, "--entrypoint", "harness", self.container.image,
                    *worker_args]
        raise ValueError(f"not a container runtime: {runtime}")

    def all_binds(self) -> list[str]:
        return [*self.binds, *self.container.extra_binds]

    def remove(self) -> None:
        """Remove the task's container if it outlived its client (a killed `docker run`)."""
        if self.container.runtime in ("docker", "podman"):
            subprocess.run([self.container.runtime, "rm", "-f", self.name], capture_output=True, timeout=60)


def container_name(job_id: str, step: str, rank: int) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"harness-{job_id}-s{step}-r{rank}")


def _bind(bind: str) -> str:
    return bind if ":" in bind else f"{bind}:{bind}"
