"""The paper's claims (claims.yaml) against the collected arms: evidence and a verdict per scale."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.results import metrics
from harness.results.records import Arm, Collection, mean_std

CLAIMS_FILE = Path(__file__).parent / "claims.yaml"
HOLDS, DOES_NOT_HOLD, NOT_RUN = "holds", "does not hold", "not run at this scale"
NOT_COMPARABLE = "not comparable"
SMALLEST = "[smallest]"


@dataclass(frozen=True)
class Side:
    arm: str
    mean: float | None
    std: float | None
    runs: list[tuple[str, str]]   # (run name, link)


@dataclass(frozen=True)
class Verdict:
    claim: dict[str, Any]
    scale: str
    verdict: str
    sides: list[Side]             # every arm in a, then b
    rule: str                     # the comparison as evaluated, with its numbers


def load_claims(path: Path = CLAIMS_FILE) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = yaml.safe_load(path.read_text())
    return spec["defaults"], spec["claims"]


def evaluate_all(collection: Collection, path: Path = CLAIMS_FILE) -> list[Verdict]:
    defaults, claims = load_claims(path)
    return [evaluate(collection, {**defaults, **claim}, scale) for scale in collection.scales for claim in claims]


def evaluate(collection: Collection, claim: dict[str, Any], scale: str) -> Verdict:
    metric = metrics.named(claim["metric"])
    names = claim["a"] if isinstance(claim["a"], list) else [claim["a"]]
    arms = [_arm(collection, scale, name) for name in [*names, claim["b"]]]
    sides = [_side(arm, name, metric) for arm, name in zip(arms, [*names, claim["b"]])]
    short = [s.arm for s, arm in zip(sides, arms) if arm is None or len(arm.values(metric)) < claim["min_seeds"]]
    if short:
        return Verdict(claim, scale, NOT_RUN, sides, f"fewer than {claim['min_seeds']} complete run(s) with "
                       f"{claim['metric']}: {', '.join(short)}")
    mixed = metrics.mixed_settings(metric, [r for arm in arms for r in arm.runs])
    if mixed:
        unaveraged = [dataclasses.replace(side, mean=None, std=None) for side in sides]
        return Verdict(claim, scale, NOT_COMPARABLE, unaveraged, f"{claim['metric']} measured under different "
                       f"settings: {mixed}")
    b = sides[-1]
    if claim["test"] == "forgotten":  # one arm after, one before
        chance = mean_std(arms[0].values(metrics.named(claim["metric"].replace("task:", "chance:"))))[0]
        return _forgotten(claim, scale, sides, chance or 0.0)
    results = [_compare(claim, a, b) for a in sides[:-1]]
    verdict = HOLDS if all(ok for ok, _ in results) else DOES_NOT_HOLD
    return Verdict(claim, scale, verdict, sides, "; ".join(rule for _, rule in results))


def _compare(claim: dict[str, Any], a: Side, b: Side) -> tuple[bool, str]:
    margin = max(claim["k"] * math.sqrt((a.std ** 2 + b.std ** 2) / 2), claim["rel_tol"] * abs(b.mean))
    difference = a.mean - b.mean
    test = claim["test"]
    ok = {"equivalent": abs(difference) <= margin, "lower": difference < -margin,
          "not_lower": difference >= -margin, "not_higher": difference <= margin}[test]
    symbol = {"equivalent": "|Δ| <= margin", "lower": "Δ < -margin", "not_lower": "Δ >= -margin",
              "not_higher": "Δ <= margin"}[test]
    # Evidence beside the rule, not part of it (the rule was fixed before any run); a rough interval:
    # with 3 seeds, ±2 standard errors covers less than 95%.
    spread = 2 * math.sqrt(a.std ** 2 / len(a.runs) + b.std ** 2 / len(b.runs))
    return ok, (f"{a.arm} - {b.arm}: Δ = {difference:+.4g} (±{spread:.2g}, 2 standard errors), margin {margin:.3g} "
                f"({symbol}: {'yes' if ok else 'no'})")


def _forgotten(claim: dict[str, Any], scale: str, sides: list[Side], chance: float) -> Verdict:
    """Knew it (above the line) before, is at or below the line after, and fell by at least the
    line's height above chance: a slide from just above the line to just below it is no forgetting."""
    (after, before), margin = sides, claim["above_chance"]
    line = chance + margin
    knew, lost, fell = before.mean >= line, after.mean <= line, before.mean - after.mean >= margin
    rule = (f"chance {chance:.3f}, line {line:.3f}: before {before.mean:.3f} ({'above' if knew else 'not above'}), "
            f"after {after.mean:.3f} ({'at or below' if lost else 'above'}), drop {before.mean - after.mean:+.3f}")
    return Verdict(claim, scale, HOLDS if knew and lost and fell else DOES_NOT_HOLD, sides, rule)


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
    mean, std = mean_std(arm.values(metric))
    return Side(arm.name, mean, std, [(r.name, r.link) for r in arm.runs if metric(r) is not None])
