"""`harness collect`: read run directories (and nothing else) and render RESULTS.md and figures/.

Per scale: the claims with verdicts, the main table, the loss curves, unconditional generation,
freezing, alignment retrieval, language forgetting, caption perplexity vs size, sample grids and
every run's provenance. Incomplete, failed and off-variant runs are listed apart and never
averaged in. The same run directories give the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from harness import artifacts
from harness.errors import HarnessError
from harness.results import arms, figures, metrics
from harness.results.claims import Verdict, at_scale, evaluate_all, load_questions
from harness.results.records import Arm, Collection, Record, collect, mean_std, read_records

TEMPLATES = Path(__file__).parent / "templates"
FIGURES = "figures"
# The paper's MS-COCO FID for the two inits (secondary source; which is which is unconfirmed).
PAPER_FID = {"random_init": "12.27 or 12.21 (secondary; order unconfirmed)",
             "pretrained": "12.21 or 12.27 (secondary; order unconfirmed)"}
FREEZING = ("pretrained", *arms.FREEZING)  # beside its unfrozen baseline
@dataclass(frozen=True)
class Report:
    text: str
    figures: dict[str, bytes]     # file name under figures/ -> PNG bytes
    readable: int                 # run directories read (those with an unreadable config.yaml aside)
    unreadable: list[str]         # "<run dir>: <problem>" for each run listed apart for a file it could not read


def build(runs_root: Path, link_base: Path) -> Report:
    records, unreadable = read_records(runs_root, link_base)
    collection = collect(records)
    verdicts = evaluate_all(collection)
    sections, pictures = [], {}
    for scale in collection.scales:
        section, drawn = _section(collection, scale, [v for v in verdicts if v.scale == scale])
        sections.append(section)
        pictures.update(drawn)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, digits=4: "-" if v is None else f"{v:.{digits}f}"
    env.filters["sig"] = lambda v: "-" if v is None else f"{v:+.3g}" if abs(v) != float("inf") else f"{v}"
    env.filters["g3"] = lambda v: f"{v:.3g}"
    env.filters["p"] = lambda v: "-" if v is None or v != v else f"{v:.3g}"
    env.filters["count"] = lambda v: "-" if v is None else f"{int(v):,}"
    env.filters["links"] = lambda runs: " ".join(f"[{name.split('/')[-1][:6]}]({link})" for name, link in runs) or "-"
    text = env.get_template("RESULTS.md.j2").render(
        sections=sections, apart=collection.apart, unreadable=unreadable,
        evaluations=len(collection.evaluations), figures_dir=FIGURES)
    listed_apart = [f"{r.run.path}: {'; '.join(r.problems)}" for r in records if r.problems]
    listed_apart += [f"{os.path.normpath(link_base / link)}: {why}" for link, why in unreadable]
    return Report(text, pictures, len(records), listed_apart)


def render(runs_root: Path, output: Path, link_base: Path | None = None, force: bool = False) -> Report:
    """Write RESULTS.md (links relative to `link_base`, default its directory) and its figures;
    figures of an earlier collect that this one does not draw (a scale gone) are removed. A runs
    root that does not exist, or one with no runs where a report already stands, writes nothing
    (unless forced): a typo must not replace the committed results with an empty report."""
    if not runs_root.is_dir():
        raise HarnessError(f"runs root {runs_root} does not exist (--runs-root or paths.runs_root)")
    report = build(runs_root, link_base or output.parent)
    directory = output.parent / FIGURES
    drawn_before = [p for pattern in figures.PATTERNS for p in directory.glob(pattern)]
    if not report.readable and (output.exists() or drawn_before) and not force:
        raise HarnessError(f"no readable runs under {runs_root}; {output} and {directory} are left as they are "
                           "(--force to write an empty report)")
    for stale in drawn_before:
        if stale.name not in report.figures:
            stale.unlink()
    if report.figures:
        directory.mkdir(exist_ok=True)
    for name, png in report.figures.items():
        (directory / name).write_bytes(png)
    output.write_text(report.text)
    return report


# --- one scale ---------------------------------------------------------------------------------

def _section(collection: Collection, scale: str, verdicts: list[Verdict]) -> tuple[dict[str, Any], dict[str, bytes]]:
    def arm(name: str) -> Arm | None:
        return collection.arm(scale, name)

    def present(names: tuple[str, ...]) -> list[Arm]:
        return [a for a in map(arm, names) if a is not None]

    inits = present(arms.INITS)
    drawn = {}
    curves = figures.loss_curves(inits, scale)
    if curves:
        drawn[f"loss_curves_{scale}.png"] = curves
    samples_arms = present(arms.INITS + arms.UNCONDITIONAL + arms.LONG)
    random_tokenizer = any("random" in str(r.provenance.get("data", {}).get("image_tokenizer_weights", ""))
                           for a in samples_arms for r in a.runs)
    grid = figures.sample_grids(samples_arms, scale, random_tokenizer)
    if grid:
        drawn[f"samples_{scale}.png"] = grid
    world = _small_world(collection, scale, inits)
    if world and world["grid"]:
        drawn[world["grid"]] = world.pop("grid_png")
    beyond, beyond_figures = _beyond(collection, scale, [v for v in verdicts if v.claim.get("exploratory")])
    drawn.update(beyond_figures)
    section = {
        "scale": scale, "verdicts": [v for v in verdicts if not v.claim.get("exploratory")], "world": world,
        "beyond": beyond,
        "image_metric": metrics.image_metric_name([r for a in inits + present(arms.UNCONDITIONAL) for r in a.runs]),
        "main": [_main_row(a) for a in inits],
        "curves": f"loss_curves_{scale}.png" if curves else None,
        "unconditional": [_row(a, loss_image=metrics.val_loss("image"), fd=metrics.image_metric)
                          for a in present(arms.UNCONDITIONAL)],
        "freezing": [_freezing_row(a) for a in present(FREEZING)],
        "alignment": [_row(a, top1=metrics.align_top1, chance=metrics.align_chance) for a in present(arms.ALIGNMENT)],
        "language": _language(arm("pretrain_text"), arm("pretrained"), arm("random_init")),
        "prompts": _prompts(arm("pretrain_text"), arm("pretrained")),
        "captions": _captions(collection, scale),
        "samples": f"samples_{scale}.png" if grid else None, "random_tokenizer": random_tokenizer,
        "runs": [_provenance_row(r) for r in sorted((r for r in collection.complete if r.scale == scale),
                                                    key=lambda r: (r.arm, r.seed))],
    }
    return section, drawn


def _small_world(collection: Collection, scale: str, inits: list[Arm]) -> dict[str, Any] | None:
    """The synthetic world's instruments: the trained image tokenizer (held-out round trips), the
    shapes classifier behind FD, whether these runs reproduced the published copies the datasets
    and FD used, the untrained reference, and the caption loss at the first step."""
    tokenizers = collection.arm(scale, "train_tokenizer")
    classifiers = collection.arm(scale, "train_classifier")
    if tokenizers is None and classifiers is None:
        return None
    trained = [r for a in inits for r in a.runs]
    used_tokenizers = {r.provenance.get("data", {}).get("image_tokenizer") for r in trained} - {None}
    extractors = {e for e in ((r.final("image") or {}).get("extractor") for r in trained) if e}
    tokenizer_rows, grid, grid_png = [], None, None
    for record in (tokenizers.runs if tokenizers else []):
        report = record.final("reconstruction")
        if report is None:
            continue
        tokenizer_rows.append({"run": (record.name, record.link), "report": report, "label": None,
                               "steps": record.final_step,
                               "used": report.get("fingerprint") in used_tokenizers if used_tokenizers else None})
        png = record.run.path / "eval" / f"reconstruction@{record.final_step}.png"
        if grid is None and png.exists():
            grid, grid_png = f"reconstruction_{scale}.png", png.read_bytes()
    tokenizer_rows += _published_rows(trained, "data", "image_tokenizer")
    classifier_rows = _published_rows(trained, "eval", "features")
    for record in (classifiers.runs if classifiers else []):
        report = record.final("classifier")
        if report is None:
            continue
        used = any(f"sha256:{report.get('sha256')}" in e for e in extractors) if extractors else None
        classifier_rows.append({"run": (record.name, record.link), "report": report, "steps": record.final_step,
                                "label": None,
                                "used": used})
    untrained = collection.arm(scale, "random_init")
    long_runs = collection.arm(scale, "random_init_long")
    reference = [r.at_steps("image").get(0) for r in (untrained.runs if untrained else [])]
    reference = [r for r in reference if r]
    return {"tokenizers": tokenizer_rows, "classifiers": classifier_rows, "grid": grid, "grid_png": grid_png,
            "untrained": {"fd": mean_std([r["value"] for r in reference]),
                          "compliance": mean_std([(r.get("compliance") or {}).get("whole_caption") for r in reference
                                                  if r.get("compliance")]),
                          "n": len(reference), "metric": reference[0]["metric"] if reference else None},
            "first_step": [{"arm": a.name, **_first_step_losses(a)} for a in inits],
            "long_runs": [_long_run_row(r) for r in (long_runs.runs if long_runs else [])],
            "arm_steps": untrained.runs[0].final_step if untrained and untrained.runs else "-"}


def _beyond(collection: Collection, scale: str, verdicts: list[Verdict]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The questions beyond the paper that have runs of their own arms at this scale: the arms side
    by side, the exploratory hypotheses' verdicts, a figure each."""
    questions, drawn = [], {}
    for question in load_questions():
        names = [at_scale(name, scale) for name in question["arms"]]
        present = [a for a in (collection.arm(scale, n) for n in names) if a is not None]
        if not any("[" in a.name for a in present):  # only the paper's own arms: nothing asked yet
            continue
        asked = [v for v in verdicts if v.claim.get("question") == question["id"]]
        # Language is measured only where a hypothesis reads it (reproduce --beyond evaluates no more).
        language = any(v.claim["metric"].startswith("task:") for v in asked)
        figure = figures.beyond_curves(present, scale, question["title"], language)
        name = f"beyond_{question['id']}_{scale}.png"
        if figure:
            drawn[name] = figure
        columns = {"loss_image": metrics.val_loss("image"), "loss_text": metrics.val_loss("text"),
                   **({"facts": metrics.task_accuracy("facts_probe")} if language else {})}
        questions.append({**question, "figure": name if figure else None, "language": language,
                          "rows": [_row(a, **columns) for a in present], "verdicts": asked})
    return questions, drawn


def _published_rows(trained: list[Record], section: str, key: str) -> list[dict[str, Any]]:
    """The published artifact the trained arms used (their config's `<section>.<key>`), with the
    report its own run made: what the datasets and FD were built with, whichever CPU made them."""
    names = sorted({r.config.get(section, {}).get(key) for r in trained} - {None, ""})
    rows = []
    for name in names:
        try:
            found = artifacts.provenance(artifacts.artifact_path(name, f"{section}.{key}"))
        except HarnessError:
            continue
        rows.append({"run": (name, f"harness/artifacts/{name}"), "report": found["report"], "steps": "-",
                     "used": True, "label": f"[published `{name}`](harness/artifacts/{name}) (from {found['run']})"})
    return rows


def _long_run_row(record) -> dict[str, Any]:
    """A random_init_long run: what its generated images and held-out loss say at its last step."""
    image = record.final("image") or {}
    return {"run": (record.name, record.link), "steps": record.final_step, "seed": record.seed,
            "metric": image.get("metric"), "fd": image.get("value"), "compliance": image.get("compliance"),
            "loss_image": (record.final("val_loss") or {}).get("loss_image")}


def _first_step_losses(arm: Arm) -> dict[str, Any]:
    """Mean training caption loss at the first logged step (step 1) over the arm's seeds."""
    values = [r.metrics[0].get("loss_text") for r in arm.runs if r.metrics and r.metrics[0].get("step") == 1]
    values = [v for v in values if v is not None]
    mean, std = mean_std(values)
    return {"loss_text": {"mean": mean, "std": std, "n": len(values), "mixed": False}}


def _stat(arm: Arm, metric: metrics.Metric) -> dict[str, Any]:
    if metrics.mixed_settings(metric, arm.runs):
        return {"mean": None, "std": None, "n": 0, "mixed": True}
    values = arm.values(metric)
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values), "mixed": False}


def _row(arm: Arm, **columns) -> dict[str, Any]:
    return {"arm": arm.name, "n": len(arm.runs), "runs": [(r.name, r.link) for r in arm.runs],
            **{name: _stat(arm, metric) for name, metric in columns.items()}}


def _main_row(arm: Arm) -> dict[str, Any]:
    return {**_row(arm, loss_image=metrics.val_loss("image"), loss_text=metrics.val_loss("text"),
                   fd=metrics.image_metric, compliance=metrics.compliance, clip=metrics.clip_score),
            "compliance_chance": mean_std(arm.values(metrics.compliance_chance))[0],
            "paper_fid": PAPER_FID.get(arm.name, "-")}


def _freezing_row(arm: Arm) -> dict[str, Any]:
    first = arm.runs[0]
    return {**_row(arm, loss_image=metrics.val_loss("image"), loss_text=metrics.val_loss("text")),
            "frozen": ", ".join(first.config.get("freeze") or []) or "nothing",
            "trainable": first.model.get("trainable"), "parameters": first.model.get("parameters")}


def _language(before: Arm | None, after: Arm | None, random: Arm | None) -> dict[str, Any] | None:
    """Task accuracy x tokens trained: the LM before image-caption training, the pre-trained runs at
    each kept checkpoint and at the end, the random-init runs at the end."""
    if after is None:
        return None
    steps = sorted(set.intersection(*(set(r.at_steps("language")) for r in after.runs)))
    columns = [("before (pretrain_text)", before, None)] if before else []
    for step in steps:
        tokens = mean_std([t for t in (r.tokens_at(step) for r in after.runs) if t is not None])[0]
        columns.append((f"pretrained, step {step} (≈{tokens or 0:,.0f} tokens)", after, step))
    if random:
        columns.append(("random_init, end", random, None))
    rows = []
    for task in _tasks_of([r for a in (before, after, random) if a for r in a.runs]):
        cells = [_stat(arm, metrics.task_accuracy(task, step)) for _, arm, step in columns]
        chance = mean_std((before or after).values(metrics.task_chance(task)))[0]
        if any(c["n"] or c["mixed"] for c in cells):
            rows.append({"task": task, "chance": chance, "cells": cells})
    runs = [r for a in (before, after, random) if a for r in a.runs]
    scorers = sorted({found.get("scorer", "unrecorded") for r in runs for found in r.at_steps("language").values()})
    return {"columns": [c[0] for c in columns], "rows": rows, "scorers": scorers,
            "runs": [(r.name, r.link) for r in runs]}


def _tasks_of(runs: list[Record]) -> list[str]:
    """Every language task the runs were scored on, in the order first met."""
    names = [task for r in runs for found in r.at_steps("language").values() for task in found.get("tasks", {})]
    return list(dict.fromkeys(names))


def _prompts(before: Arm | None, after: Arm | None) -> list[dict[str, str]]:
    if before is None or after is None:
        return []

    def answers(arm: Arm) -> list[dict[str, str]]:
        return (arm.runs[0].final("language") or {}).get("prompts", [])

    after_answers = {p["prompt"]: p["answer"] for p in answers(after)}
    return [{"prompt": p["prompt"], "before": p["answer"], "after": after_answers.get(p["prompt"], "-")}
            for p in answers(before)]


def _captions(collection: Collection, scale: str) -> list[dict[str, Any]]:
    """Held-out caption perplexity: caption-only LMs by size, beside the pre-trained LM before and
    after image-caption training."""
    names = sorted((n for s, n in collection.arms if s == scale and n.startswith("caption_lm[")),
                   key=lambda n: min(collection.arm(scale, n).values(metrics.parameters), default=0))
    rows = []
    for name in [*names, "pretrain_text", "pretrained"]:
        arm = collection.arm(scale, name)
        if arm is not None and arm.values(metrics.perplexity("captions")):
            rows.append({**_row(arm, ppl=metrics.perplexity("captions")),
                         "parameters": arm.runs[0].model.get("parameters")})
    return rows


def _provenance_row(record: Record) -> dict[str, Any]:
    last = record.metrics[-1] if record.metrics else {}
    git, image = record.provenance.get("git", {}), record.provenance.get("image") or {}
    return {"record": record, "tokens": last.get("tokens"), "loss_text": last.get("loss_text"),
            "loss_image": last.get("loss_image"),
            "commit": (git.get("sha") or "-")[:10] + ("+dirty" if git.get("dirty") else ""),
            "data": (record.data_hash or "-")[:12], "image": (image.get("id") or "none (host)")[:19]}
