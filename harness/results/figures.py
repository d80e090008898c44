"""RESULTS.md's figures: matplotlib PNGs that depend only on the runs (no timestamps, no
software tag, the font matplotlib ships), so the same runs give the same bytes."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Callable

import numpy as np

from harness.results.records import Arm, Record

PATTERNS = ("loss_curves_*.png", "samples_*.png", "reconstruction_*.png", "beyond_*.png")  # the files collect draws (and may remove)
STYLE = {"font.family": "DejaVu Sans", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}


def _styled(draw: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    """Draw in the font matplotlib ships (the bytes must not depend on the host's fonts), without
    touching the global style."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def _figure(**subplots):
    """A figure never registered with pyplot: nothing global, nothing left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=subplots.pop("figsize"))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(**subplots)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


@_styled
def loss_curves(arms: list[Arm], scale: str) -> bytes | None:
    """Text- and image-token training loss vs tokens per init: the seeds' mean, their range shaded."""
    arms = [a for a in arms if a.runs and a.runs[0].metrics]
    if not arms:
        return None
    figure, axes = _figure(nrows=1, ncols=2, figsize=(9, 3.4))
    for arm in arms:
        steps = sorted(set.intersection(*({m["step"] for m in r.metrics} for r in arm.runs)))
        tokens = np.array([np.mean([_at(r, s)["tokens"] for r in arm.runs]) for s in steps])
        for axis, modality in zip(axes, ("text", "image")):
            values = np.array([[_at(r, s)[f"loss_{modality}"] for s in steps] for r in arm.runs], dtype=float)
            line, = axis.plot(tokens, values.mean(0), label=f"{arm.name} (n={len(arm.runs)})", linewidth=1.3)
            if len(arm.runs) > 1:
                axis.fill_between(tokens, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    from matplotlib.ticker import EngFormatter

    for axis, modality in zip(axes, ("text", "image")):
        axis.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, 1M: long counts overlap
        axis.set_xlabel("tokens trained")
        axis.set_ylabel(f"training loss_{modality}")
        axis.set_title(f"{modality} tokens ({scale} scale)")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


@_styled
def beyond_curves(arms: list[Arm], scale: str, title: str, language: bool) -> bytes | None:
    """A question beyond the paper, per arm (seeds' mean): training caption and image loss vs
    tokens, and where the question reads language, the facts-probe accuracy at every evaluated step
    (the forgetting curve)."""
    arms = [a for a in arms if a.runs and all(r.metrics for r in a.runs)]
    if not arms:
        return None
    from matplotlib.ticker import EngFormatter

    figure, axes = _figure(nrows=1, ncols=3 if language else 2, figsize=(12 if language else 8, 3.4))
    for index, arm in enumerate(arms):
        style = {"color": f"C{index % 10}", "label": f"{arm.name} (n={len(arm.runs)})", "linewidth": 1.2}
        probe = _facts_probe(arm) if language else []
        if arm.runs[0].experiment == "pretrain_text":  # the LM before image-caption training: a level
            if probe:
                axes[2].axhline(probe[-1][1], linestyle="--", **style)
            continue
        steps = sorted(set.intersection(*({m["step"] for m in r.metrics} for r in arm.runs)))
        tokens = [np.mean([_at(r, s)["tokens"] for r in arm.runs]) for s in steps]
        for axis, modality in zip(axes, ("text", "image")):
            values = [[_at(r, s)[f"loss_{modality}"] for s in steps] for r in arm.runs]
            if all(v is not None for run in values for v in run):
                axis.plot(tokens, np.array(values, dtype=float).mean(0), **style)
        if probe:
            axes[2].plot(*zip(*probe), marker="o", **style)
    from matplotlib.ticker import MaxNLocator

    for axis, name in zip(axes, ("training loss_text", "training loss_image", "facts probe accuracy")):
        axis.xaxis.set_major_locator(MaxNLocator(4))
        axis.xaxis.set_major_formatter(EngFormatter(sep=""))
        axis.set_xlabel("tokens trained")
        axis.set_ylabel(name)
    axes[-1].legend(fontsize=7)
    before = language and any(a.runs[0].experiment == "pretrain_text" for a in arms)
    note = "; dashed: the LM before image-caption training" if before else ""
    figure.suptitle(f"{title} ({scale} scale){note}", fontsize=9)
    figure.tight_layout()
    return _png(figure)


def _facts_probe(arm: Arm) -> list[tuple[float, float]]:
    """(tokens, mean accuracy) at each step where every seed's facts probe was evaluated."""
    evaluated = [r.at_steps("language") for r in arm.runs]
    steps = sorted(set.intersection(*(set(e) for e in evaluated))) if evaluated else []
    points = []
    for step in steps:
        accuracies = [e[step].get("tasks", {}).get("facts_probe", {}).get("accuracy") for e in evaluated]
        tokens = [r.tokens_at(step) if step else 0.0 for r in arm.runs]
        if None not in accuracies and None not in tokens:
            points.append((float(np.mean(tokens)), float(np.mean(accuracies))))
    return points


@_styled
def sample_grids(arms: list[Arm], scale: str, random_tokenizer: bool) -> bytes | None:
    """The first saved sample grid of each arm's first seed, side by side."""
    shown = [(arm, grid) for arm in arms if (grid := first_grid(arm.runs[0])) is not None]
    if not shown:
        return None
    from PIL import Image

    figure, axes = _figure(nrows=1, ncols=len(shown), figsize=(2.6 * len(shown), 3.0), squeeze=False)
    for axis, (arm, grid) in zip(axes[0], shown):
        axis.imshow(np.asarray(Image.open(grid).convert("RGB")), interpolation="nearest")
        axis.set_title(f"{arm.name}\nseed {arm.runs[0].seed}", fontsize=8)
        axis.axis("off")
    note = "\nimage tokenizer with RANDOM weights: generation and decoding run, not image quality" if random_tokenizer else ""
    figure.suptitle(f"generated samples, {scale} scale{note}", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.86))
    return _png(figure)


def first_grid(record: Record) -> Path | None:
    step = record.final_step
    samples = record.run.path / "eval" / f"image@{step}" / "samples"
    grids = sorted(samples.glob("*.png")) if samples.is_dir() else []
    return grids[0] if grids else None


def _at(record: Record, step: int) -> dict:
    return next(m for m in record.metrics if m["step"] == step)
