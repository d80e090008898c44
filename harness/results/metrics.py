"""The numbers RESULTS.md reports, each read from one run's directory (None where it has none).

A metric is named by a string so the claims file can name it: `val_loss_image`,
`train_loss_text@0.05` (the training loss at 5% of the run's tokens), `fd`, `task:facts_probe`.
Each also reads the settings its number was measured under (extractor, sample count, reference
statistics, held-out targets): values measured under different settings are never averaged or
compared.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.results.records import Record

Reader = Callable[[Record], "float | None"]


def _no_settings(_record: Record) -> str | None:
    return None


@dataclass(frozen=True)
class Metric:
    """A number read from one run's directory, and the settings it was measured under (None where
    nothing but the training variant, already part of the arm, decides it)."""

    read: Reader
    settings: Callable[[Record], str | None] = _no_settings

    def __call__(self, record: Record) -> float | None:
        return self.read(record)


def mixed_settings(metric: Metric, records: list[Record]) -> str | None:
    """None where every record with a value measured `metric` under one setting; otherwise what
    differs, e.g. "samples: 256 (1 run), 64 (5 runs)": such values are not averaged or compared."""
    found = [json.loads(metric.settings(r) or "{}") for r in records if metric(r) is not None]
    keys = sorted({k for one in found for k in one})
    counts = {k: Counter(json.dumps(one.get(k), sort_keys=True) for one in found) for k in keys}
    differing = {k: c for k, c in counts.items() if len(c) > 1}
    if not differing:
        return None
    return "; ".join(f"{k}: " + ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in sorted(c.items()))
                     for k, c in differing.items())


def _settings(found: dict[str, Any] | None, **picked: Any) -> str | None:
    return None if found is None else json.dumps(picked, sort_keys=True, default=str)


def val_loss(modality: str) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("val_loss")
        return None if found is None else found.get(f"loss_{modality}")

    def settings(record: Record) -> str | None:
        found = record.final("val_loss")
        if found is None:
            return None
        provenance = found.get("provenance", {})
        return _settings(found, dataset=provenance.get("dataset"), split=provenance.get("split"),
                         targets=found.get(f"targets_{modality}"))
    return Metric(read, settings)


def per_sample_losses(name: str) -> Callable[[Record], "list[float | None] | None"]:
    """Each held-out sample's own loss (stored order) behind a val_loss metric; None for any other
    metric or an evaluation written before per-sample losses were kept."""
    modality = name.rsplit("_", 1)[1] if name in ("val_loss_image", "val_loss_text") else None

    def read(record: Record) -> list[float | None] | None:
        found = record.final("val_loss") if modality else None
        return None if found is None else found.get("per_sample", {}).get(f"loss_{modality}")
    return read


def train_loss_at(modality: str, fraction: float) -> Metric:
    """The first logged training loss at or past `fraction` of the run's tokens."""
    def read(record: Record) -> float | None:
        if not record.metrics or record.final_step is None:
            return None
        total = record.metrics[-1]["tokens"]
        point = next((m for m in record.metrics if m["tokens"] >= fraction * total), None)
        return None if point is None else point.get(f"loss_{modality}")
    return Metric(read)


def _image_settings(record: Record) -> str | None:
    """FD values compare only from one extractor, one FID mode (clean-fid's; None without an
    Inception and in evaluations written before the mode was recorded, whose Inception results were
    labelled "FID" and fed as legacy_tensorflow), one sample count, one reference set (its file name, not the machine-specific cache directory it
    lives in) and one way of sampling; the sampling seed is a draw, not a setting."""
    found = record.final("image")
    if found is None:
        return None
    sampling = {k: v for k, v in (found.get("sampling") or {}).items() if k != "seed"}
    picked = {k: found.get(k) for k in ("metric", "extractor", "fid_mode", "samples", "dataset")}
    return _settings(found, **picked, sampling=sampling, reference=Path(str(found.get("reference"))).name)


def _image_value(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else found["value"]


image_metric = Metric(_image_value, _image_settings)


def image_metric_name(records: list[Record]) -> str:
    """"clean-FID" or "TF-FID" only where a real Inception computed it; "FD (shapes classifier)"
    (or, in evaluations written before issue #19, "FD (random extractor)") otherwise."""
    names = sorted({r.final("image")["metric"] for r in records if r.final("image")})
    return " / ".join(names) if names else "FD/FID"


def _compliance_value(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else (found.get("compliance") or {}).get("whole_caption")


# Whole-caption compliance of the generated synthetic images (eval/compliance.py).
compliance = Metric(_compliance_value, _image_settings)


def _compliance_chance(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else (found.get("compliance") or {}).get("whole_caption_chance")


compliance_chance = Metric(_compliance_chance, _image_settings)


def _clip_value(record: Record) -> float | None:
    found = record.final("image")
    return None if found is None else (found.get("clip_score") or {}).get("value")


clip_score = Metric(_clip_value, _image_settings)


def task_accuracy(task: str, step: int | None = None) -> Metric:
    def found_at(record: Record) -> dict[str, Any] | None:
        found = record.final("language") if step is None else record.at_steps("language").get(step)
        return None if found is None or task not in found["tasks"] else found

    def read(record: Record) -> float | None:
        found = found_at(record)
        return None if found is None else found["tasks"][task]["accuracy"]

    def settings(record: Record) -> str | None:
        found = found_at(record)
        item = (found or {}).get("tasks", {}).get(task, {})
        return _settings(found, scorer=(found or {}).get("scorer"), kind=item.get("kind"), n=item.get("n"))
    return Metric(read, settings)


def task_chance(task: str) -> Metric:
    def read(record: Record) -> float | None:
        found = record.final("language")
        return None if found is None or task not in found["tasks"] else found["tasks"][task].get("chance", 0.0)
    return Metric(read)


def perplexity(corpus: str) -> Metric:
    def scored(record: Record) -> dict[str, Any] | None:
        found = record.final("language")
        return None if found is None else found["perplexity"].get(corpus)

    def read(record: Record) -> float | None:
        return (scored(record) or {}).get("perplexity")

    def settings(record: Record) -> str | None:
        return _settings(scored(record), targets=(scored(record) or {}).get("targets"))
    return Metric(read, settings)


align_top1 = Metric(lambda r: r.metrics[-1].get("val_top1") if r.job == "align" and r.metrics else None)
align_chance = Metric(lambda r: r.metrics[-1].get("chance") if r.job == "align" and r.metrics else None)
parameters = Metric(lambda r: r.model.get("parameters"))


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
    if base == "compliance":
        return compliance
    if base.startswith("task:"):
        return task_accuracy(base.split(":", 1)[1])
    if base.startswith("chance:"):
        return task_chance(base.split(":", 1)[1])
    if base.startswith("perplexity:"):
        return perplexity(base.split(":", 1)[1])
    if base == "align_top1":
        return align_top1
    raise ValueError(f"unknown metric '{name}'")
