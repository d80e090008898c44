"""Progress of long work (dataset builds, tokenizing, generation, feature extraction, the local
wait): a tqdm bar on a terminal; in a log file (not a terminal) a plain line now and then, so logs
stay line-based and greppable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINE_EVERY_S = 30.0


def progress(items: Iterable[T], total: int | None, what: str, unit: str = "it",
             log: Callable[[str], None] | None = None, stream: TextIO | None = None) -> Iterator[T]:
    """Yield `items`, showing how many of `total` are done."""
    stream = stream or sys.stderr
    if _is_terminal(stream):
        yield from tqdm(items, total=total, desc=what, unit=unit, file=stream, leave=False, dynamic_ncols=True)
        return
    done, last = 0, time.monotonic()
    for item in items:
        yield item
        done += 1
        if log is not None and time.monotonic() - last > LINE_EVERY_S:
            log(f"{what}: {done}/{total if total is not None else '?'} {unit}")
            last = time.monotonic()


class StepBar:
    """The local wait on a terminal: training steps as a bar, the newest losses beside it."""

    def __init__(self, name: str, total: int, stream: TextIO) -> None:
        self.bar = tqdm(total=total, desc=name, unit="step", file=stream, dynamic_ncols=True)

    def show(self, step: int | None, note: str) -> None:
        self.bar.update(max((step or 0) - self.bar.n, 0))
        self.bar.set_postfix_str(note or "starting", refresh=True)

    def close(self) -> None:
        self.bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
