"""Paths in the files committed from a run (eval JSON, result.json, provenance.json): written
relative to a root the reader knows, so results read the same after the runs root or the data root
moves (a clone of results/, another cluster's mount point).

The convention, one root per field (each writer says which):
- a path under the runs root is written relative to the runs root, as run names are
  ("random_init/0123456789/eval/image@150.json");
- a path under the data root is written relative to the data root ("smoke-a079fa34");
- a path outside its root (a model file elsewhere, the FID reference cache in the user's cache
  directory) moves with nothing and stays absolute.
Readers join a recorded path to its root (`resolve`), which also reads the absolute paths written
before this convention. Launch records stay machine-specific by design: config.yaml's paths.*
(the jobs of other nodes read them) and provenance.json's submitted_by (the command as typed).
(Not harness/data/portable.py, which is about image codes with the same bytes on any CPU.)
"""

from __future__ import annotations

import os
from pathlib import Path


def portable(path: str | Path, root: str | Path) -> str:
    """`path` relative to `root` (POSIX separators) where it lies under it, else absolute."""
    absolute, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix()
    # The same directory reached through a symbolic link (e.g. /tmp -> /private/tmp) is still under it.
    resolved, resolved_base = absolute.resolve(), base.resolve()
    if resolved.is_relative_to(resolved_base):
        return resolved.relative_to(resolved_base).as_posix()
    return str(absolute)


def resolve(recorded: str | Path, root: str | Path) -> Path:
    """A recorded path on this machine: a relative one under `root`; an absolute one (outside the
    root, or written before paths were recorded relative) as it stands."""
    return Path(root) / recorded
