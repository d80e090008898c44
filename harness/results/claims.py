"""The paper's claims (claims.yaml) against the collected arms: evidence and a verdict per scale
(rule v2: fixed margins, Welch tests, holds / does not hold / inconclusive)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.results import metrics, stats
from harness.results.arms import OTHER_LM_SIZES, OTHER_TOKENIZER_DATA
from harness.results.records import Arm, Collection, mean_std

CLAIMS_FILE = Path(__file__).parent / "claims.yaml"
HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run at this scale"
NOT_COMPARABLE = "not comparable"
SMALLEST = "[smallest]"
# test -> (the sign of its bound, ±margin; the alternative that makes the claim hold). The
# opposite alternative against the same bound makes it not hold.
ONE_SIDED = {"lower": (-1, stats.LESS), "not_lower": (-1, stats.GREATER), "not_higher": (+1, stats.LESS)}


@dataclass(frozen=True)
class Side:
    arm: str
    mean: float | None
    std: float | None
    runs: list[tuple[str, str]]   # (run name, link)
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """One arm against the reference: the evidence and the outcome of the registered test."""
    a: str
    b: str
    difference: float
    interval: tuple[float, float]  # 90%
    margin: float
    p_holds: float                 # the test that makes the claim hold (TOST: the larger p)
    p_against: float               # the test that makes it not hold
    outcome: str
    seeds: int | None = None       # per arm, for a decision at the registered power (inconclusive only)
    paired: str | None = None      # supporting per-sample evidence, never the verdict


@dataclass(frozen=True)
class Verdict:
    claim: dict[str, Any]
    scale: str
    verdict: str
    sides: list[Side]             # every arm in a, then b
    rule: str                     # why, in words (the reason where there are no comparisons)
    comparisons: tuple[Comparison, ...] = ()


def load_claims(path: Path = CLAIMS_FILE) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The defaults and every claim: the paper's, then the exploratory ones (`exploratory: true`)."""
    spec = yaml.safe_load(path.read_text())
    exploratory = [{**claim, "exploratory": True} for claim in spec.get("exploratory", [])]
    return spec["defaults"], [*spec["claims"], *exploratory]


def load_questions(path: Path = CLAIMS_FILE) -> list[dict[str, Any]]:
    """The questions beyond the paper: id, title, question, and the arms shown side by side."""
    return yaml.safe_load(path.read_text()).get("questions", [])


def evaluate_all(collection: Collection, path: Path = CLAIMS_FILE) -> list[Verdict]:
    defaults, claims = load_claims(path)
    return [evaluate(collection, {**defaults, **claim}, scale) for scale in collection.scales for claim in claims]


def at_scale(name: str, scale: str) -> str:
    """An arm name with the scale's placeholders filled: {size1} and {size2}, its other LM sizes;
    {tokenizer2}, its dataset under the other image tokenizer."""
    for index, size in enumerate(OTHER_LM_SIZES.get(scale, ()), start=1):
        name = name.replace(f"{{size{index}}}", size)
    return name.replace("{tokenizer2}", OTHER_TOKENIZER_DATA.get(scale, "{tokenizer2}"))


def evaluate(collection: Collection, claim: dict[str, Any], scale: str) -> Verdict:
    metric = metrics.named(claim["metric"])
    names = [at_scale(n, scale) for n in (claim["a"] if isinstance(claim["a"], list) else [claim["a"]])]
    reference = at_scale(claim["b"], scale)
    arms = [_arm(collection, scale, name) for name in [*names, reference]]
    sides = [_side(arm, name, metric) for arm, name in zip(arms, [*names, reference])]
    short = [s.arm for s, arm in zip(sides, arms) if arm is None or len(arm.values(metric)) < claim["min_seeds"]]
    if short:
        return Verdict(claim, scale, NOT_RUN, sides, f"fewer than {claim['min_seeds']} complete run(s) with "
                       f"{claim['metric']}: {', '.join(short)}")
    mixed = metrics.mixed_settings(metric, [r for arm in arms for r in arm.runs])
    if mixed:
        unaveraged = [dataclasses.replace(side, mean=None, std=None) for side in sides]
        return Verdict(claim, scale, NOT_COMPARABLE, unaveraged, f"{claim['metric']} measured under different "
                       f"settings: {mixed}")
    if claim["test"] == "forgotten":  # one arm after, one before
        chance = mean_std(arms[0].values(metrics.named(claim["metric"].replace("task:", "chance:"))))[0]
        return _forgotten(claim, scale, sides, chance or 0.0)
    b = sides[-1]
    margin = _margin(claim, b.mean)
    comparisons = tuple(_compare(claim, a, b, margin, _paired(claim, arm, arms[-1]))
                        for a, arm in zip(sides[:-1], arms[:-1]))
    outcomes = {c.outcome for c in comparisons}
    verdict = DOES_NOT_HOLD if DOES_NOT_HOLD in outcomes else HOLDS if outcomes == {HOLDS} else INCONCLUSIVE
    return Verdict(claim, scale, verdict, sides, _margin_words(claim), comparisons)


def _margin(claim: dict[str, Any], reference: float) -> float:
    spec = claim["margin"]
    return spec["relative"] * abs(reference) if "relative" in spec else float(spec["absolute"])


def _margin_words(claim: dict[str, Any]) -> str:
    spec = claim["margin"]
    return f"margin {spec['relative']:.0%} of the reference" if "relative" in spec else f"margin {spec['absolute']:g}"


def _compare(claim: dict[str, Any], a: Side, b: Side, margin: float, paired: str | None) -> Comparison:
    alpha, test = claim["alpha"], claim["test"]
    difference = a.mean - b.mean
    if test == "equivalent":
        p_holds = max(stats.p_value(a.values, b.values, -margin, stats.GREATER),
                      stats.p_value(a.values, b.values, margin, stats.LESS))
        p_against = min(stats.p_value(a.values, b.values, margin, stats.GREATER),
                        stats.p_value(a.values, b.values, -margin, stats.LESS))
        # showing equivalence takes both bounds; showing a difference, the nearer one
        bounds = (-margin, margin) if abs(difference) < margin else (math.copysign(margin, difference),)
    else:
        sign, holds = ONE_SIDED[test]
        against = stats.GREATER if holds == stats.LESS else stats.LESS
        bounds = (sign * margin,)
        p_holds = stats.p_value(a.values, b.values, bounds[0], holds)
        p_against = stats.p_value(a.values, b.values, bounds[0], against)
    outcome = HOLDS if p_holds < alpha else DOES_NOT_HOLD if p_against < alpha else INCONCLUSIVE
    seeds = stats.seeds_needed(a.values, b.values, bounds, alpha, claim["power"]) if outcome == INCONCLUSIVE else None
    return Comparison(a.arm, b.arm, difference, stats.interval(a.values, b.values), margin, p_holds, p_against,
                      outcome, seeds, paired)


def _paired(claim: dict[str, Any], a: Arm | None, b: Arm | None) -> str | None:
    """Mean over held-out samples of (a's seed-mean loss - b's), where both arms scored the same
    samples: supporting evidence, far tighter than seeds, but blind to seed-to-seed variation."""
    read = metrics.per_sample_losses(claim["metric"])
    found = [[v for v in map(read, arm.runs) if v is not None] for arm in (a, b)] if a and b else []
    if not found or not all(found) or len({len(v) for side in found for v in side}) != 1:
        return None
    means = [np.array([[np.nan if x is None else x for x in run] for run in side]).mean(0) for side in found]
    differences = means[0] - means[1]
    differences = differences[~np.isnan(differences)]
    if len(differences) < 2:
        return None
    mean, low, high = stats.paired(differences)
    return f"paired over {len(differences)} held-out samples: {mean:+.4g} [{low:+.3g}, {high:+.3g}]"


def _forgotten(claim: dict[str, Any], scale: str, sides: list[Side], chance: float) -> Verdict:
    """Knew it (above the line) before, is at or below the line after, and a drop of at least the
    line's height above chance is shown. Shown above the line after, or shown to have dropped by
    less (a slide from just above the line to just below it): not forgotten."""
    (after, before), margin, alpha = sides, claim["above_chance"], claim["alpha"]
    line = chance + margin
    difference = after.mean - before.mean
    p_drop = stats.p_value(after.values, before.values, -margin, stats.LESS)
    # Not forgotten, shown: still above the line, or a drop smaller than the line's height.
    p_kept = min(stats.one_sample_p(after.values, line, stats.GREATER),
                 stats.p_value(after.values, before.values, -margin, stats.GREATER))
    knew = before.mean >= line
    if not knew:
        outcome = INCONCLUSIVE
    elif after.mean <= line and p_drop < alpha:
        outcome = HOLDS
    elif p_kept < alpha:
        outcome = DOES_NOT_HOLD
    else:
        outcome = INCONCLUSIVE
    seeds = (stats.seeds_needed(after.values, before.values, (-margin,), alpha, claim["power"])
             if outcome == INCONCLUSIVE and knew else None)
    comparison = Comparison(after.arm, before.arm, difference, stats.interval(after.values, before.values),
                            margin, p_drop, p_kept, outcome, seeds)
    rule = (f"chance {chance:.3f}, line {line:.3f}: before {before.mean:.3f}"
            f"{'' if knew else ' (never above the line: nothing to forget)'}, after {after.mean:.3f}; "
            f"p (drop > {margin:g}) {p_drop:.3g}, p (still above the line, or a smaller drop) {p_kept:.3g}")
    return Verdict(claim, scale, outcome, sides, rule, (comparison,))


def _arm(collection: Collection, scale: str, name: str) -> Arm | None:
    if name.endswith(SMALLEST):
        prefix = name[: -len(SMALLEST)]
        candidates = [arm for (s, n), arm in collection.arms.items() if s == scale and n.startswith(prefix + "[")]
        sized = [(min(arm.values(metrics.parameters), default=math.inf), arm.name, arm) for arm in candidates]
        return min(sized, key=lambda item: item[:2])[2] if sized else None
    return collection.arm(scale, name)


def _side(arm: Arm | None, name: str, metric: metrics.Metric) -> Side:
    if arm is None:
        return Side(name, None, None, [])
    values = arm.values(metric)
    mean, std = mean_std(values)
    return Side(arm.name, mean, std, [(r.name, r.link) for r in arm.runs if metric(r) is not None], tuple(values))
