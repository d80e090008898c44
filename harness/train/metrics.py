"""metrics.jsonl: one line per logged step.

Result fields (step, tokens, loss, loss_text, loss_image, lr, grad_norm) are kept apart from the
`timing` object, so two runs can be compared bit for bit on everything but timing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

TIMING_KEY = "timing"


class MetricsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any], timing: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, TIMING_KEY: timing}) + "\n")
            f.flush()


def truncate_after(path: Path, step: int) -> None:
    """Keep only lines up to `step` (a resumed run replays the rest); atomic."""
    kept = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= step]
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return list(_lines(path)) if path.exists() else []


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    return  # a line cut by a kill mid-write ends the readable part


def read_metrics_strict(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Every line, and the number of the first unreadable one (None if all read): the collector
    must not report a run whose last logged step was cut off as if an earlier step were its end."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records, None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    return records, number
    return records, None


def without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != TIMING_KEY} for r in records]
