"""Where a pre-trained init comes from: an upstream run of this harness, or a model file path."""

from __future__ import annotations

import re
from pathlib import Path

from harness.config.schema import RunConfig
from harness.errors import HarnessError

RUN_REFERENCE = re.compile(r"^(?P<experiment>[A-Za-z0-9_]+)/(?P<run_id>[0-9a-f]{6,})$")


def is_run_reference(source: str) -> bool:
    return RUN_REFERENCE.match(source) is not None


def resolve_source(config: RunConfig) -> Path:
    """The model file a pre-trained init loads: `<exp>/<run_id>` -> that run's final checkpoint."""
    source = config.init.source
    if not source:
        raise HarnessError("init.strategy=pretrained needs init.source (an experiment, <exp>/<run_id> or a path)")
    if is_run_reference(source):
        return Path(config.paths.runs_root) / source / "checkpoints" / "final"
    return Path(source)
