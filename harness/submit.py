"""`harness submit`: plan runs, apply the resubmission rules, launch, and (locally) wait.

Resubmission: done -> say so; pending/running -> say so; failed, cancelled, timed out or
interrupted -> a new attempt in the same directory, on the code snapshot of its first attempt;
--force starts over (the old directory is kept beside it, renamed, never deleted).

Slurm runs sharing a resource spec (and upstream dependency) go out as ONE sbatch job array; each
array task reads its own run's config.yaml. Local runs execute one after another, in dependency
order, with a progress line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import submitit

from harness.errors import HarnessError
from harness.launch import snapshot
from harness.launch.executor import make_executor, render_sbatch, submit_all
from harness.launch.image import git_sha_mismatch, identify
from harness.launch.task import RunTask, task_wrapper
from harness.plan import PlannedRun, plan, upstream_keys, upstream_value
from harness.progress import StepBar
from harness.provenance import code_snapshot_id, git_state, submit_provenance
from harness.rundir import RunDir, RunState, read_metrics
from harness.status import wait_for
from harness.train.sources import is_run_reference

POLL_S = 1.0
SLURM_FOLDER = ".slurm"


class RunFailed(HarnessError):
    exit_code = 1


@dataclass
class Group:
    """Runs submitted together as one job (array) on one executor."""

    runs: list[PlannedRun]
    dependency: str | None = None

    @property
    def launch(self):
        return self.runs[0].config.launch

    @property
    def runs_root(self) -> Path:
        return Path(self.runs[0].config.paths.runs_root)

    @property
    def job_name(self) -> str:
        return f"harness-{self.runs[0].config.experiment}"

    def folder(self, attempts: list[int]) -> Path:
        names = ",".join(f"{p.run.name}#{a}" for p, a in zip(self.runs, attempts))
        digest = hashlib.sha256(names.encode()).hexdigest()[:10]
        return self.runs_root / SLURM_FOLDER / f"{self.runs[0].config.experiment}-{digest}"

    def executor(self, attempts: list[int], code: Path) -> submitit.Executor:
        """The one executor (and sbatch script) of this group: for a real submit and --dry-run alike."""
        return make_executor(self.launch, self.folder(attempts), name=self.job_name,
                             python=snapshot.python_command(code), dependency=self.dependency)


def submit(overrides: list[str], force: bool = False, dry_run: bool = False, wait: bool = False,
           out: TextIO = sys.stdout) -> list[RunDir]:
    runs = plan(overrides, log=lambda msg: print(msg, file=out, flush=True), allow_missing_data=dry_run)
    if dry_run:
        to_launch = [_avoid_failed_nodes(p, out) for p in runs if _should_launch(p, force, dry_run, out)]
        _identify_images(to_launch, out, dry_run=True)
        _print_dry_run(to_launch, out)
        return [p.run for p in runs]
    # Before anything is written; for the runs that may launch (their states are read again under the lock).
    images = _identify_images([p for p in runs if force or p.state not in (RunState.DONE, RunState.RUNNING)], out)
    slurm = [p for p in runs if p.config.launch.executor != "local"]
    if slurm:
        # Decided and submitted under the runs root's lock: two submits of one config give one job.
        with submit_lock(slurm):
            slurm = [_avoid_failed_nodes(p, out) for p in slurm if _should_launch(p, force, dry_run, out)]
            _launch_slurm(slurm, force, images, out)
    for planned in [p for p in runs if p.config.launch.executor == "local"]:
        _run_local(planned, force, images, out)
    if wait and slurm:
        wait_for([p.run for p in slurm], out)
    return [p.run for p in runs]


LOCK_NAME = ".submit.lock"


@contextlib.contextmanager
def submit_lock(runs: list[PlannedRun]):
    """Hold every runs root's submit lock (sorted, so two submitters cannot deadlock) from the
    moment a run's state is read until its attempt is recorded with its job."""
    roots = sorted({Path(p.config.paths.runs_root) for p in runs})
    with contextlib.ExitStack() as stack:
        for root in roots:
            root.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(root / LOCK_NAME, "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _should_launch(planned: PlannedRun, force: bool, dry_run: bool, out: TextIO) -> bool:
    state = planned.state
    if force and state == RunState.RUNNING:
        raise HarnessError(f"{planned.run.name} is pending or running; cancel it first "
                           f"(harness cancel {planned.run.name}), then --force")
    if force:
        return True
    if state == RunState.DONE:
        print(f"{planned.run.name}: already done ({planned.run.path})", file=out)
        return False
    if state == RunState.RUNNING:
        job = planned.run.attempts()[-1].get("job_id")
        print(f"{planned.run.name}: already pending or running (job {job}); not resubmitted", file=out)
        return False
    if state in (RunState.FAILED, RunState.INTERRUPTED) and not dry_run:
        print(f"{planned.run.name}: previous attempt {state.value}; starting a new attempt", file=out)
    return True


def _avoid_failed_nodes(planned: PlannedRun, out: TextIO) -> PlannedRun:
    """A failed Slurm run's new attempt excludes the nodes its ranks failed on."""
    launch, attempts = planned.config.launch, planned.run.attempts()
    if launch.executor != "slurm" or not launch.exclude_failed_nodes or not attempts:
        return planned
    nodes = planned.run.failed_nodes(attempts[-1]["attempt"])
    if not nodes:
        return planned
    excluded = sorted({*filter(None, (launch.exclude or "").split(",")), *nodes})
    print(f"{planned.run.name}: excluding node(s) {', '.join(nodes)} where the last attempt failed", file=out)
    launch = dataclasses.replace(launch, exclude=",".join(excluded))
    return dataclasses.replace(planned, config=dataclasses.replace(planned.config, launch=launch))


# --- local -------------------------------------------------------------------------------------

def _run_local(planned: PlannedRun, force: bool, images: dict, out: TextIO) -> None:
    """Start a local run (under the submit lock), follow it to its end, and start it again while its
    failures are ones a retry can cure, within launch.max_failures (the decision is rank 0's)."""
    with submit_lock([planned]):
        if not _should_launch(planned, force, False, out):
            return
        job, attempt = _launch_local(planned, force, images)
    while True:
        try:
            wait_local(planned, job, out)
            return
        except RunFailed:
            decision = next(a for a in planned.run.attempts() if a["attempt"] == attempt).get("decision") or ""
            if not decision.startswith("retrying"):
                raise
        print(f"{planned.run.name}: attempt {attempt} failed: {planned.run.failure_reason(attempt)}; {decision}",
              file=out, flush=True)
        with submit_lock([planned]):
            if planned.run.attempts()[-1]["attempt"] != attempt:  # someone submitted it meanwhile
                print(f"{planned.run.name}: attempt {planned.run.attempts()[-1]['attempt']} was started "
                      "by another submit; not retrying here", file=out)
                return
            job, attempt = _launch_local(planned, False, {}, origin="retry")


def _launch_local(planned: PlannedRun, force: bool, images: dict, origin: str = "submit") -> tuple[submitit.Job, int]:
    run, config = planned.run, planned.config
    for upstream in _upstreams(planned):
        if upstream.state() != RunState.DONE:
            raise HarnessError(f"{run.name} starts from {upstream.name}, which is {upstream.state().value}; "
                               "submit again when it is done")
    new = not run.path.exists() or force
    code = _prepare(planned, force, images)
    attempt = run.add_attempt("local", origin)
    try:
        executor = make_executor(config.launch, run.logs(attempt), name=f"{config.experiment}-{run.run_id}",
                                 python=snapshot.python_command(code))
        job = executor.submit(RunTask(str(run.path), attempt))
    except BaseException:
        _roll_back(run, attempt, new)
        raise
    run.set_job_id(attempt, str(job.job_id))
    return job, attempt


def wait_local(planned: PlannedRun, job: submitit.Job, out: TextIO) -> None:
    """Follow a local run to its end (a bar on a terminal, a line every 15 s otherwise); raise
    RunFailed naming the cause."""
    run, steps = planned.run, planned.config.total_steps
    bar = StepBar(run.name, steps, out) if out.isatty() else None
    last_shown = 0.0
    while not job.done():
        time.sleep(POLL_S)
        if bar is not None:
            bar.show(*latest_progress(run))
        elif time.time() - last_shown > 15:
            print(progress_line(run, steps), file=out, flush=True)
            last_shown = time.time()
    if bar is not None:
        bar.show(*latest_progress(run))
        bar.close()
    try:
        job.results()
    except Exception:  # submitit wraps the task's exception; the ranks recorded the cause
        attempt = run.attempts()[-1]["attempt"]
        reason = run.failure_reason(attempt) or "no reason recorded"
        raise RunFailed(f"{run.name} failed: {reason}; logs: {run.logs(attempt)}") from None
    if not run.done_path.exists():  # preempted: checkpointed, not finished
        raise RunFailed(f"{run.name} {run.attempts()[-1].get('exit_reason')}; logs: {job.paths.folder}")
    print(f"{run.name}: done in {run.path}", file=out)
    print(f"  {_summary(planned)}", file=out, flush=True)


def _summary(planned: PlannedRun) -> str:
    """One line on what a finished local run produced."""
    run = planned.run
    if planned.config.job == "tokenize":
        s = json.loads((run.path / "tokenize.json").read_text())
        return (f"{s['shards']} shards ({s['resumed']} already done), {s.get('written', 0)} samples written; "
                f"dataset {'complete' if s['manifest'] else 'waits for other parts'}")
    if planned.config.job == "eval_language":
        r = json.loads((run.path / "result.json").read_text())
        return "  ".join(f"{name} {_fmt(task['accuracy'])}" for name, task in r["tasks"].items()) or "no tasks"
    if planned.config.job == "eval_image":
        r = json.loads((run.path / "result.json").read_text())
        if "metric" not in r:
            return r["note"]
        return f"{r['metric']} {_fmt(r['value'])} over {r['samples']} samples of {r['run']} at step {r['step']}"
    if planned.config.job == "train_tokenizer":
        r = json.loads((run.path / "eval" / f"reconstruction@{planned.config.total_steps}.json").read_text())
        return (f"held-out PSNR {r['psnr']:.2f} dB, oracle attribute accuracy {r['oracle']['attribute_accuracy']:.3f}, "
                f"codebook usage {r['usage']['share']:.3f}; artifact/ (version it: harness publish {run.name})")
    if planned.config.job == "train_classifier":
        r = json.loads((run.path / "eval" / f"classifier@{planned.config.total_steps}.json").read_text())
        return (f"held-out accuracy {', '.join(f'{k} {v:.3f}' for k, v in sorted(r['accuracy'].items()))}; "
                f"artifact/ (version it: harness publish {run.name})")
    records = read_metrics(run.metrics_path)
    final = records[-1] if records else {"step": 0}
    if planned.config.job == "align":
        return (f"final loss {_fmt(final.get('loss'))}  held-out top-1 {_fmt(final.get('val_top1'))} "
                f"(chance {_fmt(final.get('chance'))}; {final['step']} steps)")
    return (f"final loss_text {_fmt(final.get('loss_text'))}  loss_image {_fmt(final.get('loss_image'))}"
            f"  ({final['step']} steps, {final.get('tokens', 0)} tokens)")


def progress_line(run: RunDir, steps: int) -> str:
    step, note = latest_progress(run)
    return f"{run.name}: starting" if step is None else f"{run.name}: step {step}/{steps}  {note}"


def latest_progress(run: RunDir) -> tuple[int | None, str]:
    """The newest logged step (None before the first) and its losses."""
    records = read_metrics(run.metrics_path)
    if not records:
        return None, ""
    r = records[-1]
    if "loss_reconstruction" in r:
        return r["step"], (f"reconstruction {_fmt(r['loss_reconstruction'])}  PSNR {r['psnr_train']:.2f} dB  "
                           f"codes restarted {r['restarts']}")
    if "loss_text" not in r and "loss_image" not in r:
        return r["step"], f"loss {_fmt(r['loss'])}"
    speed = r.get("timing", {}).get("tokens_per_s")
    return r["step"], (f"loss {_fmt(r['loss'])}  text {_fmt(r.get('loss_text'))}  image {_fmt(r.get('loss_image'))}"
                       f"  {speed or 0:.0f} tok/s")


# --- slurm -------------------------------------------------------------------------------------

def _launch_slurm(runs: list[PlannedRun], force: bool, images: dict, out: TextIO) -> None:
    job_ids: dict[str, str] = {}
    _plan_groups(runs, job_ids, emit=lambda group: job_ids.update(_submit_group(group, force, images, out)))


def _plan_groups(runs: list[PlannedRun], job_ids: dict[str, str], emit) -> None:
    """Group runs into job arrays and hand each group to `emit` after the groups it depends on.

    Runs that other runs of this submission start from go first, a stage per dependency depth.
    The runs nothing here depends on (the experiments asked for) then share one array per resource
    spec, which waits for all of their upstreams together (afterok on each)."""
    names = {p.run.name for p in runs}
    needed = {u.name for p in runs for u in _upstreams(p)}
    depth: dict[str, int] = {}
    for planned in runs:  # plan order: an upstream before the runs that start from it
        inside = [u.name for u in _upstreams(planned) if u.name in names]
        depth[planned.run.name] = 1 + max((depth[name] for name in inside), default=-1)
    stages: OrderedDict[tuple, list[PlannedRun]] = OrderedDict()
    for planned in sorted(runs, key=lambda p: _stage(p, needed, depth)):
        key = (_stage(planned, needed, depth), json.dumps(dataclasses.asdict(planned.config.launch)),
               planned.config.paths.runs_root)
        stages.setdefault(key, []).append(planned)
    for group_runs in stages.values():
        upstreams = [u for p in group_runs for u in _upstreams(p)]
        emit(Group(group_runs, _dependency(upstreams, job_ids)))


def _stage(planned: PlannedRun, needed: set[str], depth: dict[str, int]) -> tuple[int, int]:
    name = planned.run.name
    return (0, depth[name]) if name in needed else (1, 0)


def _upstreams(planned: PlannedRun) -> list[RunDir]:
    """The runs of this harness a run starts from (its LM, its alignment)."""
    root = Path(planned.config.paths.runs_root)
    values = [upstream_value(planned.config, key) for key in upstream_keys(planned.config)]
    return [RunDir(root / value) for value in values if value and is_run_reference(value)]


def _dependency(upstreams: list[RunDir], job_ids: dict[str, str]) -> str | None:
    """afterok on each upstream's job: submitted in this call, or already pending/running."""
    jobs: list[str] = []
    for upstream in upstreams:
        job = _job_of(upstream, job_ids)
        if job is not None and job not in jobs:
            jobs.append(job)
    return "afterok:" + ":".join(jobs) if jobs else None


def _job_of(upstream: RunDir, job_ids: dict[str, str]) -> str | None:
    if upstream.name in job_ids:
        return job_ids[upstream.name]
    attempts = upstream.attempts()
    if attempts and not attempts[-1].get("end") and upstream.state() == RunState.RUNNING:
        return str(attempts[-1]["job_id"])
    if upstream.state() == RunState.DONE:
        return None
    return f"<job of {upstream.name}>"  # only seen in --dry-run output


def _submit_group(group: Group, force: bool, images: dict, out: TextIO) -> dict[str, str]:
    created = [not p.run.path.exists() or force for p in group.runs]
    codes = [_prepare(p, force, images) for p in group.runs]
    attempts = [p.run.add_attempt("slurm") for p in group.runs]
    folder = group.folder(attempts)
    try:
        if len(set(codes)) != 1:
            raise HarnessError("runs of one array must share a code snapshot; submit them separately")
        executor = group.executor(attempts, codes[0])
        script = render_sbatch(executor, len(group.runs))
        jobs = submit_all(executor, [RunTask(str(p.run.path), a) for p, a in zip(group.runs, attempts)])
    except BaseException:
        for planned, attempt, new in zip(group.runs, attempts, created):
            _roll_back(planned.run, attempt, new)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    submitted = {}
    for index, (planned, attempt, job) in enumerate(zip(group.runs, attempts, jobs)):
        planned.run.set_job_id(attempt, str(job.job_id))
        for path in (planned.run.path / "submit.sh", planned.run.logs(attempt) / "submit.sh"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
        submitted[planned.run.name] = str(job.job_id).split("_")[0]
        where = f"array task {index} of job {submitted[planned.run.name]}" if len(jobs) > 1 else f"job {job.job_id}"
        print(f"{planned.run.name}: submitted as {where} -> {planned.run.path}", file=out, flush=True)
    return submitted


def _roll_back(run: RunDir, attempt: int, created_now: bool) -> None:
    """The scheduler refused: leave no half-created run directory and no phantom attempt."""
    if created_now:
        shutil.rmtree(run.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # the experiment's directory, if this run was its first
            run.path.parent.rmdir()
    else:
        run.remove_attempt(attempt)


# --- shared ------------------------------------------------------------------------------------

def _identify_images(runs: list[PlannedRun], out: TextIO, dry_run: bool = False) -> dict[str, dict | None]:
    """Each distinct container image, identified before anything is written; warn on stale images.
    A missing image stops a submit and is a warning on a dry run (it may be built before the submit)."""
    images: dict[str, dict | None] = {}
    code_sha = git_state()["sha"]
    for planned in runs:
        key = _image_key(planned)
        if key not in images:
            try:
                images[key] = identify(planned.config.container)
            except HarnessError as exc:
                if not dry_run:
                    raise
                print(f"warning: {exc}; a submit would stop here", file=out, flush=True)
                images[key] = None
            warning = git_sha_mismatch(images[key], code_sha)
            if warning:
                print(warning, file=out, flush=True)
    return images


def _image_key(planned: PlannedRun) -> str:
    return f"{planned.config.container.runtime}:{planned.config.container.image}"


def _prepare(planned: PlannedRun, force: bool, images: dict) -> Path:
    """Create (or reuse) the run directory; return the code snapshot this attempt executes."""
    run, config = planned.run, planned.config
    runs_root = Path(config.paths.runs_root)
    if force and run.path.exists():
        _set_aside(run)
    previous = run.provenance().get("code_snapshot")
    if previous:
        return snapshot.existing(runs_root, previous)
    snapshot_id, code = snapshot.freeze(runs_root)
    provenance = submit_provenance(planned.data_provenance(), images[_image_key(planned)], list(planned.overrides))
    run.create(config, {**provenance, "code_snapshot": snapshot_id, "world_size": config.world_size,
                        "cluster": config.launch.cluster})
    return code


def _print_dry_run(runs: list[PlannedRun], out: TextIO) -> None:
    """What would be submitted, exactly, and the command each task then runs; nothing is written
    under the runs root."""
    for planned in [p for p in runs if p.config.launch.executor == "local"]:
        attempt = len(planned.run.attempts()) + 1
        print(f"{planned.run.name}: {planned.state.value}; would run {planned.config.world_size} local task(s) "
              f"-> {planned.run.path}", file=out)
        print(f"  each task runs: {_task_command(planned, attempt, _snapshot_of(planned), '<rank>')}", file=out)
    groups: list[Group] = []
    _plan_groups([p for p in runs if p.config.launch.executor != "local"], {}, emit=groups.append)
    for group in groups:
        attempts = [len(p.run.attempts()) + 1 for p in group.runs]
        code = _snapshot_of(group.runs[0])
        executor = group.executor(attempts, code)
        print(f"# sbatch ({len(group.runs)} run(s); array index -> run directory)", file=out)
        for index, planned in enumerate(group.runs):
            print(f"#   {index}: {planned.run.path}", file=out)
        print(render_sbatch(executor, len(group.runs)), file=out)
        print("# each task (rank $SLURM_PROCID of its job) then runs, from submitit's worker on its node:", file=out)
        for index, (planned, attempt) in enumerate(zip(group.runs, attempts)):
            print(f"#   {index} runs: {_task_command(planned, attempt, code, '$SLURM_PROCID')}", file=out)


def _snapshot_of(planned: PlannedRun) -> Path:
    """The code snapshot a run's next attempt would execute: its first attempt's, else today's."""
    runs_root = Path(planned.config.paths.runs_root)
    previous = planned.run.provenance().get("code_snapshot")
    return snapshot.snapshot_dir(runs_root, previous or code_snapshot_id())


def _task_command(planned: PlannedRun, attempt: int, code: Path, rank: str) -> str:
    """The trainer command of one task, as the task builds it (container runtime line included)."""
    config = planned.config
    error_file = planned.run.logs(attempt) / f"rank{rank}.error"
    name = f"harness-$SLURM_JOB_ID-s0-r{rank}"  # what container_name() makes of the job's own values
    wrapper = task_wrapper(config, config.paths.data_root, str(code), name)
    task = RunTask(str(planned.run.path), attempt)
    if wrapper is None:
        python = snapshot.python_command(code)
        return f"{python} -m harness {shlex.join(task.worker_args(error_file))}"
    return shlex.join(wrapper.wrap(task.worker_args(error_file), env={}))


def _set_aside(run: RunDir) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run.path.rename(run.path.with_name(f"{run.run_id}.replaced-{stamp}"))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
