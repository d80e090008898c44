"""Versioned artifacts the harness trains itself: the small scales' image tokenizers and shapes
classifiers, under harness/artifacts/<name>/ (in git, and in every run's code snapshot).

Training on a CPU in float32 does not give the same bytes on another CPU, so what the datasets
and metrics are built with is not retrained on the fly: a train_tokenizer or train_classifier run
is published once (`harness publish RUN`), and configs name the published copy with its hash
(data.image_tokenizer + data.image_tokenizer_sha256, eval.features + eval.features_sha256), as
the paper scale names the released SBER-MoVQGAN and Inception files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.rundir import RunDir, RunState, utc_now

ROOT = Path(__file__).resolve().parent / "artifacts"
PROVENANCE = "provenance.json"
# job -> (default artifact name prefix, its report (eval/<report>@<steps>.json), the config keys naming it)
PUBLISHED = {
    "train_tokenizer": ("tokenizer", "reconstruction", ("data.image_tokenizer", "data.image_tokenizer_sha256")),
    "train_classifier": ("classifier", "classifier", ("eval.features", "eval.features_sha256")),
}


def _checked_name(name: str, key: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise HarnessError(f"{key}={name!r}: not an artifact name (a directory under {ROOT})")
    return name


def artifact_path(name: str, key: str) -> Path:
    """The directory of a published artifact; `key` (the config key naming it) goes in errors."""
    path = ROOT / _checked_name(name, key)
    if not (path / PROVENANCE).is_file():
        known = ", ".join(sorted(p.name for p in ROOT.iterdir() if (p / PROVENANCE).is_file())) if ROOT.is_dir() else ""
        raise HarnessError(f"{key}={name!r}: no published artifact at {path} (published: {known or 'none'}); "
                           "make one with its train_* experiment and `harness publish RUN`")
    return path


def provenance(path: Path) -> dict:
    try:
        return json.loads((path / PROVENANCE).read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{path / PROVENANCE} is unreadable ({type(exc).__name__})") from None


def publish(run: RunDir, name: str | None = None) -> tuple[Path, dict]:
    """Copy a done train_tokenizer/train_classifier run's artifact/ to harness/artifacts/<name>/
    with its provenance; returns (directory, provenance)."""
    from harness.config import load_run_config

    if run.state() != RunState.DONE:
        raise HarnessError(f"{run.name} is {run.state().value}, not done: only a finished run is published")
    config = load_run_config(run.config_path)
    if config.job not in PUBLISHED:
        raise HarnessError(f"{run.name} is a {config.job} run; publish takes {' or '.join(PUBLISHED)} runs")
    prefix, report_name, keys = PUBLISHED[config.job]
    report_path = run.path / "eval" / f"{report_name}@{config.total_steps}.json"
    try:
        report = json.loads(report_path.read_text())
        digest = report.get("fingerprint") or report["sha256"]
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise HarnessError(f"{run.name}: its report {report_path} is missing or unreadable "
                           f"({type(exc).__name__}); resubmit the run with --force") from None
    name = _checked_name(name or f"{prefix}-{config.scale}", "--name")
    record = {"name": name, "run": run.name, "job": config.job, "scale": config.scale,
              "data": {"name": config.data.name, "image_size": config.data.image_size,
                       "codebook_size": config.data.codebook_size, "seed": config.data.seed},
              "sha256": digest, "report": report, "published": utc_now(),
              "config_keys": {keys[0]: name, keys[1]: digest}}
    target = ROOT / name
    staging = target.with_name(f".{name}.publishing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.path / "artifact", staging)
    (staging / PROVENANCE).write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target, record
