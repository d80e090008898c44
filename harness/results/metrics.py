"""The numbers RESULTS.md reports, each read from one run's directory (None where it has none).

A metric is named by a string so the claims file can name it: `val_loss_image`,
`train_loss_text@0.05` (the training loss at 5% of the run's tokens), `fd`, `task:facts_probe`.
"""

from __future__ import annotations

from typing import Callable

from harness.results.records import Record

Metric = Callable[[Record], "float | None"]


def val_loss(modality: str) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("val_loss")
        return None if found is None else found.get(f"loss_{modality}")
    return read


def train_loss_at(modality: str, fraction: float) -> Metric:
    """The first logged training loss at or past `fraction` of the run's tokens."""
    def read(record: Record) -> float | None:
        if not record.metrics or record.final_step is None:
            return None
        total = record.metrics[-1]["tokens"]
        point = next((m for m in record.metrics if m["tokens"] >= fraction * total), None)
        return None if point is None else point.get(f"loss_{modality}")
    return read


def image_metric(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else found["value"]


def image_metric_name(records: list[Record]) -> str:
    """"FID" only where a real Inception computed it; FD (random extractor) otherwise."""
    names = sorted({r.final("image")["metric"] for r in records if r.final("image")})
    return " / ".join(names) if names else "FD/FID"


def clip_score(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else (found.get("clip_score") or {}).get("value")


def task_accuracy(task: str, step: int | None = None) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("language") if step is None else record.at_steps("language").get(step)
        return None if found is None or task not in found["tasks"] else found["tasks"][task]["accuracy"]
    return read


def task_chance(task: str) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("language")
        return None if found is None or task not in found["tasks"] else found["tasks"][task].get("chance", 0.0)
    return read


def perplexity(corpus: str) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("language")
        return None if found is None else found["perplexity"].get(corpus, {}).get("perplexity")
    return read


def align_top1(record: Record) -> float | None:
    return record.metrics[-1].get("val_top1") if record.job == "align" and record.metrics else None


def align_chance(record: Record) -> float | None:
    return record.metrics[-1].get("chance") if record.job == "align" and record.metrics else None


def parameters(record: Record) -> float | None:
    return record.model.get("parameters")


def named(name: str) -> Metric:
    """A metric by its name in the claims file."""
    base, _, argument = name.partition("@")
    if base in ("val_loss_image", "val_loss_text"):
        return val_loss(base.rsplit("_", 1)[1])
    if base in ("train_loss_image", "train_loss_text") and argument:
        return train_loss_at(base.rsplit("_", 1)[1], float(argument))
    if base == "fd":
        return image_metric
    if base == "clip_score":
        return clip_score
    if base.startswith("task:"):
        return task_accuracy(base.split(":", 1)[1])
    if base.startswith("chance:"):
        return task_chance(base.split(":", 1)[1])
    if base.startswith("perplexity:"):
        return perplexity(base.split(":", 1)[1])
    if base == "align_top1":
        return align_top1
    raise ValueError(f"unknown metric '{name}'")
