"""Batches by step, optionally prepared by DataLoader workers.

A batch is a pure function of its step (see data.stream), so workers change only where batches are
built, never which: resuming at any step with any number of workers reads the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch.utils.data

from harness.data.stream import Batch, RankStream
from harness.errors import HarnessError, one_line


class StepDataset(torch.utils.data.Dataset):
    def __init__(self, stream: RankStream, start: int, stop: int) -> None:
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Batch | WorkerFailure:
        # A worker's exception reaches the trainer as torch's text with the worker's traceback in
        # it; the one-line reason travels instead and is raised in the training process.
        try:
            return self.stream.batch(self.start + index)
        except Exception as exc:
            return WorkerFailure(one_line(exc))


@dataclass(frozen=True)
class WorkerFailure:
    reason: str


def step_batches(stream: RankStream, start: int, stop: int, workers: int) -> Iterator[tuple[int, Batch]]:
    """(step, batch) for steps start..stop-1, in order."""
    if workers == 0:
        for step in range(start, stop):
            yield step, stream.batch(step)
        return
    loader = torch.utils.data.DataLoader(StepDataset(stream, start, stop), batch_size=None, shuffle=False,
                                         num_workers=workers, prefetch_factor=2, persistent_workers=False)
    for step, batch in enumerate(loader, start=start):
        if isinstance(batch, WorkerFailure):
            raise HarnessError(f"preparing the batch of step {step}: {batch.reason}")
        yield step, batch
