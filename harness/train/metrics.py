"""Writing metrics.jsonl: one line per logged step (its reader is the run directory's, in
harness.rundir, so the collector never imports the trainer).

Result fields (step, tokens, loss, loss_text, loss_image, lr, grad_norm) are kept apart from the
`timing` object, so two runs can be compared bit for bit on everything but timing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.rundir import TIMING_KEY, read_metrics
from harness.tracking import Trackers


class MetricsWriter:
    """metrics.jsonl, and the same values to the run's trackers (TensorBoard, W&B) by step."""

    def __init__(self, path: Path, trackers: Trackers | None = None) -> None:
        self.path, self.trackers = path, trackers

    def write(self, record: dict[str, Any], timing: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, TIMING_KEY: timing}) + "\n")
            f.flush()
        if self.trackers is not None:
            shown = {f"train/{k}": v for k, v in record.items() if k != "step"}
            self.trackers.log({**shown, "train/tokens_per_s": timing.get("tokens_per_s")}, record["step"])

    def held_out(self, step: int, losses: dict[str, Any]) -> None:
        if self.trackers is not None:
            self.trackers.log({f"val/{k}": v for k, v in losses.items()}, step)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


def truncate_after(path: Path, step: int) -> None:
    """Keep only lines up to `step` (a resumed run replays the rest); atomic."""
    kept = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= step]
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)
