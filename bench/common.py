"""Shared by the benchmarks: the machine they ran on, and where their figures go.

Benchmarks print their figure beside its target and write the same numbers, with the machine's
description, to bench/results/<name>.json. They measure ratios side by side in one process (these
machines are noisy); nothing here is a timed test.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(name: str, figures: dict[str, Any], targets: dict[str, str], directory: Path = RESULTS) -> Path:
    """Print each figure (with its target where it has one) and write them to `directory`
    (bench/results/ unless a caller, e.g. a test, names another)."""
    for key, value in figures.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else value
        print(f"{name}: {key} = {shown}" + (f"   (target: {targets[key]})" if key in targets else ""))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    payload = {"benchmark": name, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "figures": figures, "targets": targets}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{name}: wrote {path}")
    return path
