"""submitit executors from a run's launch settings, and the exact sbatch text they submit."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from harness.config.schema import LaunchConfig
from harness.errors import HarnessError

# srun flags for every task: one failing task ends the whole step instead of leaving peers hung in
# a collective.
SRUN_ARGS = ("--kill-on-bad-exit=1",)


class SlurmExecutor(submitit.SlurmExecutor):
    """submitit's Slurm executor, constructible where Slurm is absent (for --dry-run rendering)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def make_executor(launch: LaunchConfig, folder: Path, name: str, python: str | None = None,
                  dependency: str | None = None) -> submitit.Executor:
    if launch.executor == "local":
        if launch.nodes != 1:
            raise HarnessError(f"launch.nodes={launch.nodes}: the local executor runs on one node")
        executor = submitit.LocalExecutor(folder=str(folder), python=python)
        # submitit's local default is a 2-minute timeout, which would "preempt" a smoke run.
        executor.update_parameters(name=name, tasks_per_node=launch.tasks_per_node,
                                   timeout_min=launch.timeout_min, signal_delay_s=launch.signal_delay_s)
        return executor
    executor = SlurmExecutor(folder=str(folder), python=python)
    executor.update_parameters(job_name=name, **slurm_parameters(launch, dependency))
    return executor


def slurm_parameters(launch: LaunchConfig, dependency: str | None = None) -> dict:
    """One place maps the launch settings to sbatch options (submitit's names)."""
    params = {
        "nodes": launch.nodes,
        "ntasks_per_node": launch.tasks_per_node,
        "cpus_per_task": launch.cpus_per_task,
        "mem": f"{launch.mem_gb}GB",
        "time": launch.timeout_min,
        "signal_delay_s": launch.signal_delay_s,
        "array_parallelism": launch.array_parallelism,
        "srun_args": list(SRUN_ARGS),
    }
    if launch.gpus_per_node:
        params["gpus_per_node"] = launch.gpus_per_node
    optional = {"partition": launch.partition, "account": launch.account, "qos": launch.qos,
                "constraint": launch.constraint, "exclude": launch.exclude, "dependency": dependency}
    params.update({k: v for k, v in optional.items() if v})
    if launch.exclusive:
        params["exclusive"] = True
    # Preempted runs checkpoint and put themselves back in the queue (scontrol requeue).
    params["additional_parameters"] = {"requeue": True}
    if launch.setup:
        params["setup"] = list(launch.setup)
    return params


def render_sbatch(executor: submitit.Executor, count: int) -> str:
    """Exactly the script submitit writes for `count` submissions (an --array when count > 1)."""
    params = dict(executor.parameters)
    if count > 1:
        params["map_count"] = count
    return _make_sbatch_string(command=executor._submitit_command_str, folder=executor.folder, **params)


def submit_all(executor: submitit.Executor, tasks: list) -> list[submitit.Job]:
    """Submit tasks as one job (one task) or one job array; sbatch's refusal becomes a HarnessError."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            if len(tasks) == 1:
                return [executor.submit(tasks[0])]
            with executor.batch():
                jobs = [executor.submit(task) for task in tasks]
            return jobs
    except submitit.core.utils.FailedJobError as exc:
        message = " ".join(str(exc).split()) or captured.getvalue().strip()
        raise HarnessError(f"sbatch refused the job: {message}") from None
    except FileNotFoundError as exc:
        raise HarnessError(f"cannot submit to Slurm here: {exc.filename} not found") from None
