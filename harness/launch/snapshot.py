"""Freeze the code a run executes: a copy of the package (and jobs/) taken at submit.

Jobs import `harness` from the snapshot (PYTHONPATH), never from the live checkout, so editing
the checkout while a run waits in the queue, or between its attempts, changes nothing. A new
attempt of a run reuses the snapshot of its first attempt.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.provenance import REPO_ROOT, code_snapshot_id

SNAPSHOTS = ".code"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def snapshot_dir(runs_root: Path, snapshot_id: str) -> Path:
    return runs_root / SNAPSHOTS / snapshot_id


def freeze(runs_root: Path) -> tuple[str, Path]:
    """Snapshot the live code (once per distinct content); returns (id, directory)."""
    snapshot_id = code_snapshot_id()
    target = snapshot_dir(runs_root, snapshot_id)
    if not target.exists():
        staging = target.with_name(f"{snapshot_id}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "harness", staging / "harness", ignore=IGNORED)
        shutil.copytree(REPO_ROOT / "jobs", staging / "jobs", ignore=IGNORED)
        try:
            staging.rename(target)
        except OSError:  # another submit froze the same content first
            shutil.rmtree(staging, ignore_errors=True)
    return snapshot_id, target


def existing(runs_root: Path, snapshot_id: str) -> Path:
    target = snapshot_dir(runs_root, snapshot_id)
    if not (target / "harness").is_dir():
        raise HarnessError(f"code snapshot {snapshot_id} of this run is missing at {target}; "
                           "resubmit with --force to start over on the current code")
    return target


def python_command(snapshot: Path) -> str:
    """The interpreter line submitit puts in the job script: this Python, importing the snapshot.

    PYTHONSAFEPATH keeps the working directory off sys.path: submitted from a checkout, it would
    otherwise shadow the snapshot with the live `harness/` (and it is inherited by the trainer).
    """
    return f"env PYTHONSAFEPATH=1 PYTHONPATH={shlex.quote(str(snapshot))} {shlex.quote(sys.executable)}"
