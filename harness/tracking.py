"""Where a run's numbers are watched while it runs: TensorBoard event files in `<run>/tb/` (always,
rank 0) and, with `logging.wandb=true`, a Weights & Biases run whose id is the harness run id.

metrics.jsonl and eval/*.json stay the record the collector reads; trackers are views of the same
values. A resumed attempt continues both views: TensorBoard drops the replayed steps (purge_step)
and W&B resumes the run of the same id (`resume="allow"`), online or offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig
from harness.errors import HarnessError
from harness.rundir import RunDir

TB_DIR = "tb"
STEP_METRIC = "trainer/step"


class Trackers:
    """TensorBoard and W&B, as configured, for one run directory. `step` is the trained step.
    `resumed_step`: where a training attempt starts (its earlier attempts' later steps are hidden);
    None for an evaluation, which adds to the views without hiding anything. A tracker that fails
    (no network for W&B, a full disk) is dropped with a warning: it never stops the work it watches."""

    def __init__(self, run: RunDir, config: RunConfig, resumed_step: int | None = None, job: str | None = None) -> None:
        job = job or config.job
        self.tensorboard = _guarded("TensorBoard", lambda: _tensorboard(run, config, resumed_step, job))
        self.wandb = _guarded("W&B", lambda: _wandb_run(run, config, job, resumed_step is not None)) \
            if config.logging.wandb else None

    def log(self, scalars: dict[str, Any], step: int) -> None:
        """Numbers only: None (a modality the step did not have) and non-numbers are skipped."""
        kept = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None and not _guarded("TensorBoard", lambda: _add(self.tensorboard, kept, step)):
            self.tensorboard = None
        if self.wandb is not None and kept and not _guarded("W&B", lambda: _send(self.wandb, kept, step)):
            self.wandb = None

    def close(self) -> None:
        if self.tensorboard is not None:
            _guarded("TensorBoard", lambda: self.tensorboard.close())
        if self.wandb is not None:
            _guarded("W&B", lambda: self.wandb.finish())


def _add(writer, scalars: dict[str, float], step: int) -> bool:
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)
    writer.flush()
    return True


def _send(wandb_run, scalars: dict[str, float], step: int) -> bool:
    wandb_run.log({**scalars, STEP_METRIC: step})
    return True


def _guarded(name: str, action):
    try:
        return action()
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - a view of the run must not end the run
        print(f"warning: {name} logging stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return None


def _tensorboard(run: RunDir, config: RunConfig, resumed_step: int | None, job: str):
    if not config.logging.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: the events earlier attempts logged after the step this one starts from (0 for a
    # fresh start) are hidden, so replayed steps are not drawn twice.
    return SummaryWriter(str(run.path / TB_DIR), purge_step=None if resumed_step is None else resumed_step + 1,
                         filename_suffix=f".{job}")


def _wandb_run(run: RunDir, config: RunConfig, job: str, training: bool):
    try:
        import wandb
    except ImportError:
        raise HarnessError("logging.wandb=true needs the wandb package (pip install wandb)") from None
    from harness.config.compose import to_dict

    settings = config.logging
    os.environ.setdefault("WANDB_SILENT", "true")
    # The harness run id is the W&B run id: every attempt of a run (requeued, resumed) continues one
    # W&B run, and evaluations of its checkpoints join it.
    found = wandb.init(project=settings.wandb_project, entity=settings.wandb_entity or None, id=run.run_id,
                       name=run.name, group=run.experiment, job_type=job, resume="allow", mode=settings.wandb_mode,
                       dir=str(run.path), settings=wandb.Settings(console="off"),
                       # the run's config is the training's; an evaluation adds values, not settings
                       config=to_dict(config) if training else None)
    # Every value is drawn against the trained step, whichever job logs it (an evaluation of a kept
    # checkpoint comes after later steps were logged).
    found.define_metric(STEP_METRIC)
    found.define_metric("*", step_metric=STEP_METRIC)
    return found


def log_evaluation(config: RunConfig, target: RunDir, step: int, scalars: dict[str, Any]) -> None:
    """An evaluation job's numbers, into the evaluated run's views at the step it evaluated. A
    reference measurement of the untrained model goes under its own tags, so TensorBoard does not
    read step 0 arriving after later steps as a restart."""
    if not (config.logging.tensorboard or config.logging.wandb):
        return
    prefix = "eval_untrained" if config.eval.untrained else "eval"
    trackers = Trackers(target, config, job=config.job)
    try:
        trackers.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step)
    finally:
        trackers.close()


def tensorboard_command(runs_root: Path, experiment: str | None = None) -> str:
    """The command that opens TensorBoard over every run (or one experiment's runs)."""
    root = runs_root / experiment if experiment else runs_root
    if not root.is_dir():
        raise HarnessError(f"{root} does not exist (paths.runs_root={runs_root})")
    return f"tensorboard --logdir {root} --port 6006"
