"""Writing checkpoints and model files that may not fit.

A full disk (or a quota, or an I/O error) must end a run with one line that names the place and the
space left there, never with a traceback or with a half-written file taken for a whole one.
"""

from __future__ import annotations

import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, one_line


class NotWritten(HarnessError):
    """A checkpoint or a model file could not be written."""

    exit_code = 1  # the machine's fault, not a refused input (2)


def torch_save(obj: Any, path: Path, zipfile: bool = True) -> None:
    """torch.save that, when the file does not fit, removes what it wrote and raises OSError, errno
    included. Given a path, torch's own writer reports a full disk only as "unexpected pos 3072 vs
    2964"; given a Python file, the write raises OSError, which the zip writer's closing error hides."""
    try:
        with open(path, "wb") as f:
            try:
                torch.save(obj, f, _use_new_zipfile_serialization=zipfile)
            except RuntimeError as exc:
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise
    except BaseException:
        with suppress(OSError):
            path.unlink(missing_ok=True)  # the free space a failure reports is without this part
        raise


def save_whole(obj: Any, path: Path, what: str) -> None:
    """`obj` to `path` whole or not at all (a .partial renamed into place); NotWritten naming `what`,
    the path and the free space when it does not fit."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch_save(obj, partial)
        os.replace(partial, path)
    except OSError as exc:
        raise NotWritten(f"{what} {path} could not be written: {why(exc, path.parent)}") from None


def why(exc: BaseException, where: Path) -> str:
    """`<cause> (<space> free)`: the system's words for an OSError, else the exception as one line;
    the space left where it failed (after a full disk: how much there is, next to what was needed)."""
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
    return f"{cause} ({free_space(where)} free)"


def free_space(where: Path) -> str:
    for path in (where, *where.parents):  # the nearest directory that exists
        try:
            return _size(shutil.disk_usage(path).free)
        except OSError:
            continue
    return "unknown"


def _size(n: int) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.1f} GiB"
