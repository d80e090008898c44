"""Where a run's numbers are watched while it runs: TensorBoard event files in `<run>/tb/` (always,
rank 0) and, with `logging.wandb=true`, a Weights & Biases run whose id is the harness run id.

metrics.jsonl and eval/*.json stay the record the collector reads; trackers are views of the same
values. A resumed attempt continues both views: TensorBoard drops the replayed steps (purge_step)
and W&B resumes the run of the same id (`resume="allow"`), online or offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig
from harness.errors import HarnessError
from harness.rundir import RunDir

TB_DIR = "tb"
STEP_METRIC = "trainer/step"


class Trackers:
    """TensorBoard and W&B, as configured, for one run directory. `step` is the trained step."""

    def __init__(self, run: RunDir, config: RunConfig, resumed_step: int = 0, job: str | None = None) -> None:
        self.tensorboard = _tensorboard(run, config, resumed_step, job or config.job)
        self.wandb = _wandb_run(run, config, job or config.job) if config.logging.wandb else None

    def log(self, scalars: dict[str, Any], step: int) -> None:
        """Numbers only: None (a modality the step did not have) and non-numbers are skipped."""
        kept = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for tag, value in kept.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()
        if self.wandb is not None and kept:
            self.wandb.log({**kept, STEP_METRIC: step})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _tensorboard(run: RunDir, config: RunConfig, resumed_step: int, job: str):
    if not config.logging.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: the events a previous attempt logged after the checkpoint this one resumes from
    # are hidden, so replayed steps are not drawn twice.
    return SummaryWriter(str(run.path / TB_DIR), purge_step=resumed_step + 1 if resumed_step else None,
                         filename_suffix=f".{job}")


def _wandb_run(run: RunDir, config: RunConfig, job: str):
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
                       dir=str(run.path), config=to_dict(config), settings=wandb.Settings(console="off"))
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
