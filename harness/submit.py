"""`harness submit`: plan runs, apply the resubmission rules, launch, and (locally) wait.

Resubmission: done -> say so; pending/running -> say so; failed, cancelled, timed out or
interrupted -> a new attempt in the same directory; --force starts over (the old directory is kept
beside it, renamed, never deleted).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import submitit

from harness.errors import HarnessError
from harness.launch.executor import make_executor
from harness.launch.task import RunTask
from harness.plan import PlannedRun, plan
from harness.provenance import submit_provenance
from harness.rundir import RunDir, RunState
from harness.train.metrics import read_metrics

POLL_S = 1.0


class RunFailed(HarnessError):
    exit_code = 1


def submit(overrides: list[str], force: bool = False, dry_run: bool = False, out: TextIO = sys.stdout) -> list[RunDir]:
    runs = plan(overrides, log=lambda msg: print(msg, file=out, flush=True))
    for planned in runs:
        if dry_run:
            print(describe_plan(planned), file=out)
            continue
        state = planned.state
        if state == RunState.DONE and not force:
            print(f"{planned.run.name}: already done ({planned.run.path})", file=out)
            continue
        if state == RunState.RUNNING and not force:
            job = planned.run.attempts()[-1].get("job_id")
            print(f"{planned.run.name}: already pending or running (job {job}); not resubmitted", file=out)
            continue
        if force and planned.run.path.exists():
            _set_aside(planned.run, out)
        elif state in (RunState.FAILED, RunState.INTERRUPTED):
            print(f"{planned.run.name}: previous attempt {state.value}; starting a new attempt", file=out)
        job = launch(planned)
        if planned.config.launch.executor == "local":
            wait_local(planned, job, out)
    return [p.run for p in runs]


def launch(planned: PlannedRun) -> submitit.Job:
    run, config = planned.run, planned.config
    provenance = submit_provenance(planned.data_provenance(), config.launch.image, list(planned.overrides))
    run.create(config, {**provenance, "world_size": config.world_size, "cluster": config.launch.cluster})
    attempt = run.add_attempt(config.launch.executor)
    executor = make_executor(config.launch, run.logs(attempt))
    executor.update_parameters(name=f"{config.experiment}-{run.run_id}")
    job = executor.submit(RunTask(str(run.path), attempt))
    run.set_job_id(attempt, str(job.job_id))
    return job


def wait_local(planned: PlannedRun, job: submitit.Job, out: TextIO) -> None:
    """Follow a local run to its end with a progress line; raise RunFailed naming its logs."""
    run, steps = planned.run, planned.config.train.steps
    interactive = out.isatty()
    last_shown = 0.0
    while not job.done():
        time.sleep(POLL_S)
        if interactive or time.time() - last_shown > 15:
            print(("\r" if interactive else "") + progress_line(run, steps), end="" if interactive else "\n",
                  file=out, flush=True)
            last_shown = time.time()
    if interactive:
        print(file=out)
    try:
        job.results()
    except Exception:  # submitit wraps the task's exception; rank 0 recorded the reason already
        reason = run.attempts()[-1].get("exit_reason") or "no reason recorded"
        raise RunFailed(f"{run.name} {reason}; logs: {job.paths.folder}") from None
    final = read_metrics(run.metrics_path)[-1]
    print(f"{run.name}: done in {run.path}", file=out)
    print(f"  final loss_text {_fmt(final.get('loss_text'))}  loss_image {_fmt(final.get('loss_image'))}"
          f"  ({final['step']} steps, {final['tokens']} tokens)", file=out, flush=True)


def progress_line(run: RunDir, steps: int) -> str:
    records = read_metrics(run.metrics_path)
    if not records:
        return f"{run.name}: starting"
    r = records[-1]
    speed = r.get("timing", {}).get("tokens_per_s")
    return (f"{run.name}: step {r['step']}/{steps}  loss {_fmt(r['loss'])}  text {_fmt(r.get('loss_text'))}"
            f"  image {_fmt(r.get('loss_image'))}  {speed or 0:.0f} tok/s")


def describe_plan(planned: PlannedRun) -> str:
    config = planned.config
    return (f"{planned.run.name}: {planned.state.value}; would submit {config.world_size} task(s) on "
            f"'{config.launch.cluster}' ({config.launch.executor}) -> {planned.run.path}\n"
            f"  each task runs: {' '.join(RunTask(str(planned.run.path), 0).command())}")


def _set_aside(run: RunDir, out: TextIO) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = run.path.with_name(f"{run.run_id}.replaced-{stamp}")
    run.path.rename(target)
    print(f"{run.name}: --force: previous directory kept as {target}", file=out)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
