"""What the collector knows about one run, read from its directory and nothing else.

A training run's numbers: the training curve (metrics.jsonl), the held-out losses, image and
language evaluations at its final step (eval/<name>@<step>.json), language evaluations at kept
checkpoints, its trainable parameter count (model.json); an alignment run's held-out retrieval.
Runs are grouped into arms: runs of one experiment at one scale whose configs differ only in
seed (and launch-only keys). Only complete runs of an arm's main variant are averaged.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from harness.config.identity import LAUNCH_ONLY_SECTIONS, ONLY_THROUGH_OTHER_KEYS, without_neutral_defaults
from harness.config.compose import scale_defaults
from harness.config.schema import STEPS_SECTION
from harness.rundir import RunDir, RunState, find_runs, read_metrics_strict, without_timing

# libyaml's loader where present: a thousand run configs parse in a fraction of the pure-Python time.
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# What arms average over: the seed, and the sections run identity leaves out (launch-only), plus
# eval settings, which do not change what a training run computes.
NOT_VARIANT = ("seed", "eval", *LAUNCH_ONLY_SECTIONS, *ONLY_THROUGH_OTHER_KEYS)


def beyond_tags(config: dict[str, Any]) -> list[str]:
    """What sets a run apart from its experiment's arm at its scale (the questions beyond the paper):
    a text-loss weight, a text mix, another LM size or another dataset (image tokenizer) than the
    scale's own. Older configs without a key read as its neutral value."""
    tags = []
    weight = config.get("train", {}).get("text_loss_weight", 1.0)
    if weight != 1.0:
        tags.append(f"text x{weight:g}")
    mix = config.get("data", {}).get("text_mix", 0.0)
    if mix:
        tags.append(f"mix {mix:g}")
    defaults = scale_defaults(config["scale"])
    model, data = config.get("model", {}).get("name"), config.get("data", {}).get("name")
    if model and model != defaults.get("model", model):
        tags.append(f"model {model}")
    if data and data != defaults.get("data", data):
        tags.append(f"data {data}")
    return tags


@dataclass(frozen=True)
class Record:
    run: RunDir
    config: dict[str, Any]
    state: str
    provenance: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]]      # "<name>@<step>" -> the eval JSON
    model: dict[str, Any]
    link: str                             # the run directory, relative to RESULTS.md
    problems: tuple[str, ...] = ()        # files that could not be read: the run is listed apart

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def experiment(self) -> str:
        return self.config["experiment"]

    @property
    def scale(self) -> str:
        return self.config["scale"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def job(self) -> str:
        return self.config["job"]

    @property
    def arm(self) -> str:
        """The arm's name: the experiment, told apart where one experiment has several arms."""
        if self.experiment == "caption_lm":
            return f"caption_lm[{self.config['model']['name']}]"
        if self.job == "align" and self.config["align"]["shuffle_captions"]:
            return "align[shuffled captions]"
        tags = beyond_tags(self.config)
        return f"{self.experiment}[{', '.join(tags)}]" if tags else self.experiment

    @property
    def variant(self) -> str:
        kept = without_neutral_defaults({k: v for k, v in self.config.items() if k not in NOT_VARIANT})
        launch = self.config.get("launch", {})
        kept["world_size"] = launch.get("nodes", 1) * launch.get("tasks_per_node", 1)  # changes results
        kept["data_hash"] = self.data_hash
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def data_hash(self) -> str | None:
        return self.provenance.get("data", {}).get("hash")

    @property
    def final_step(self) -> int | None:
        if self.job == "align":
            return self.metrics[-1]["step"] if self.metrics else None
        if self.job in STEPS_SECTION:
            return self.config[STEPS_SECTION[self.job]]["steps"] if self.state == RunState.DONE.value else None
        return self.config["train"]["steps"] if self.state == RunState.DONE.value else None

    def final(self, name: str) -> dict[str, Any] | None:
        """The eval JSON `name` at the final step (val_loss, image, language)."""
        return self.evals.get(f"{name}@{self.final_step}")

    def at_steps(self, name: str) -> dict[int, dict[str, Any]]:
        found = {}
        for key, value in self.evals.items():
            prefix, _, step = key.partition("@")
            if prefix == name and step.isdigit():
                found[int(step)] = value
        return dict(sorted(found.items()))

    def tokens_at(self, step: int) -> float | None:
        """Tokens trained by `step`, interpolated between logged steps (a checkpoint kept at a token
        count falls between them; tokens per step barely vary)."""
        logged = [(0, 0)] + [(m["step"], m["tokens"]) for m in self.metrics if "tokens" in m]
        for (s0, t0), (s1, t1) in zip(logged, logged[1:]):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        return None


class Unreadable(Exception):
    """A run whose config.yaml cannot be read: it cannot be placed in an arm at all."""


def read_records(runs_root: Path, relative_to: Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Every run under the root, and (link, why) for each whose config cannot be read."""
    records, unreadable = [], []
    for run in find_runs(runs_root):
        try:
            records.append(read_record(run, relative_to))
        except Unreadable as exc:
            unreadable.append((_relative(run.path, relative_to), str(exc)))
    return records, unreadable


def read_record(run: RunDir, relative_to: Path) -> Record:
    """The run as its files say; a file that cannot be read is named in `problems` (the run is then
    listed apart, never averaged in with part of its numbers)."""
    problems = []
    try:
        config = yaml.load(run.config_path.read_text(), Loader=_YAML)
        if not isinstance(config, dict) or not {"experiment", "scale", "job"} <= config.keys():
            raise ValueError("not a run config")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
        raise Unreadable(f"unreadable config.yaml ({type(exc).__name__})") from None
    provenance = _json_file(run.provenance_path, problems) or {}
    evals = {path.stem: found for path in sorted((run.path / "eval").glob("*@*.json"))
             if (found := _json_file(path, problems)) is not None}
    metrics, cut = read_metrics_strict(run.metrics_path)
    if cut:
        problems.append(f"metrics.jsonl line {cut} unreadable (cut off?)")
    return Record(run=run, config=config, state=_state(run, provenance), provenance=provenance,
                  metrics=without_timing(metrics), evals=evals,
                  model=_json_file(run.path / "model.json", problems) or {},
                  link=_relative(run.path, relative_to), problems=tuple(problems))


def _json_file(path: Path, problems: list[str]) -> Any:
    """The file's JSON, None where it is absent; where unreadable, None and the problem noted:
    a file cut by a kill mid-write is never guessed at."""
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        found = None
    if not isinstance(found, dict):  # cut, corrupt, or not an object: the numbers cannot be trusted
        problems.append(f"unreadable {path.parent.name + '/' if path.parent.name == 'eval' else ''}{path.name}")
        return None
    return found


def _state(run: RunDir, provenance: dict[str, Any]) -> str:
    """From the files alone (never squeue or the process table), so RESULTS.md depends only on the
    run directories: done, else how the last attempt ended, else incomplete."""
    if run.done_path.exists():
        return RunState.DONE.value
    attempts = provenance.get("attempts") or [{}]
    return attempts[-1].get("exit_reason") or "incomplete (no end recorded)"


EVALUATION_JOBS = ("eval_image", "eval_language", "tokenize")  # their numbers live in the runs they read


@dataclass
class Arm:
    """The complete runs of one arm's main variant at one scale (one per seed)."""

    scale: str
    name: str
    runs: list[Record] = field(default_factory=list)

    def values(self, metric: Callable[[Record], float | None]) -> list[float]:
        return [v for v in (metric(r) for r in self.runs) if v is not None]


@dataclass
class Collection:
    arms: dict[tuple[str, str], Arm]      # (scale, arm name) -> arm
    complete: list[Record]                # averaged in
    apart: list[tuple[Record, str]]       # listed apart, with why
    evaluations: list[Record]             # evaluation jobs (their numbers live in the trained runs)

    @property
    def scales(self) -> list[str]:
        order = {"paper": 0, "smoke": 1, "micro": 2}
        return sorted({s for s, _ in self.arms}, key=lambda s: (order.get(s, 9), s))

    def arm(self, scale: str, name: str) -> Arm | None:
        return self.arms.get((scale, name))


def collect(records: list[Record]) -> Collection:
    evaluations = [r for r in records if r.job in EVALUATION_JOBS]
    trained = [r for r in records if r.job not in EVALUATION_JOBS]
    apart = [(r, "; ".join((r.state, *r.problems))) for r in trained if r.state != RunState.DONE.value]
    apart += [(r, "; ".join(r.problems)) for r in trained if r.state == RunState.DONE.value and r.problems]
    done = [r for r in trained if r.state == RunState.DONE.value and not r.problems]
    by_arm: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in done:
        by_arm[(record.scale, record.arm)].append(record)
    arms, complete = {}, []
    for key, members in sorted(by_arm.items()):
        main = _main_variant(members)
        chosen = sorted((r for r in members if r.variant == main), key=lambda r: (r.seed, r.run.run_id))
        seen_seeds: set[int] = set()
        for record in chosen:
            if record.seed in seen_seeds:
                apart.append((record, "same seed as another run of its arm"))
                continue
            seen_seeds.add(record.seed)
            complete.append(record)
            arms.setdefault(key, Arm(*key)).runs.append(record)
        apart += [(r, f"other settings than its arm's main variant ({r.variant} vs {main})")
                  for r in members if r.variant != main]
    failed_evals = [(r, f"{r.job} {r.state}") for r in evaluations if r.state != RunState.DONE.value]
    apart.sort(key=lambda item: item[0].name)
    return Collection(arms, complete, apart + failed_evals, evaluations)


def _main_variant(members: list[Record]) -> str:
    """The variant with the most runs (ties: the smallest hash), so an extra one-off run with other
    settings never displaces the seeds of the arm."""
    counts: dict[str, int] = defaultdict(int)
    for record in members:
        counts[record.variant] += 1
    return min(counts, key=lambda v: (-counts[v], v))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
