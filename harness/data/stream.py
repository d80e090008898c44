"""The training stream: a seeded, checkpointable order over (shard, offset), split across ranks.

Every epoch has its own permutation: shards in a seeded order, samples in a seeded order within each
shard (so a rank reads a shard at a time, not random bytes everywhere). The stream is the epochs
concatenated; its state is one integer, the number of samples consumed by all ranks together.
Step s takes global positions [s*B, (s+1)*B) with B = world * local batch, and rank r takes the r-th
contiguous slice of that, so ranks are disjoint and together cover each epoch exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.data.shards import Sample, ShardReader
from harness.data.vocab import VocabLayout
from harness.errors import HarnessError


class SampleError(HarnessError, ValueError):
    """A sample a run cannot use (ids outside the vocabulary, too long for seq_len); names its shard."""


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # int64 [batch, seq_len]; inputs are tokens[:, :-1], targets tokens[:, 1:]
    sample_ids: tuple[str, ...]
    epoch: int


class EpochOrder:
    def __init__(self, shard_sizes: list[int], seed: int) -> None:
        self.shard_sizes = shard_sizes
        self.seed = seed
        self.epoch_size = sum(shard_sizes)
        if self.epoch_size == 0:  # refused at submit (plan); a dataset emptied since fails here
            raise HarnessError(f"the split holds no samples ({len(shard_sizes)} shards): nothing to train on")
        self._cached: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """[(shard, offset)] of every sample of the epoch, in stream order (the last one cached)."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._permute(epoch))
        return self._cached[1]

    def _permute(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for shard in rng.permutation(len(self.shard_sizes)):
            offsets = rng.permutation(self.shard_sizes[shard])
            parts.append(np.stack([np.full_like(offsets, shard), offsets], axis=1))
        return np.concatenate(parts)

    def at(self, position: int) -> tuple[int, int, int]:
        """(epoch, shard, offset) of a global stream position."""
        epoch, index = divmod(position, self.epoch_size)
        shard, offset = self.order(epoch)[index]
        return epoch, int(shard), int(offset)


class RankStream:
    """The samples one rank trains on, step by step, resumable from a global position."""

    def __init__(self, reader: ShardReader, order: EpochOrder, layout: VocabLayout, seq_len: int,
                 rank: int, world_size: int, local_batch: int, with_text: bool = True) -> None:
        self.reader, self.order, self.layout, self.seq_len = reader, order, layout, seq_len
        self.rank, self.world_size, self.local_batch = rank, world_size, local_batch
        self.with_text = with_text

    @property
    def global_batch(self) -> int:
        return self.world_size * self.local_batch

    def positions(self, step: int) -> range:
        """This rank's global stream positions at a step."""
        start = step * self.global_batch + self.rank * self.local_batch
        return range(start, start + self.local_batch)

    def sample_at(self, position: int) -> tuple[int, Sample]:
        """(epoch, sample) at a global stream position."""
        epoch, shard, offset = self.order.at(position)
        return epoch, self.reader.sample(shard, offset)

    def batch(self, step: int) -> Batch:
        located = [self.sample_at(p) for p in self.positions(step)]
        tokens = torch.stack([sequence(s, self.layout, self.seq_len, self.with_text) for _, s in located])
        return Batch(tokens, tuple(s.sample_id for _, s in located), located[0][0])


class MixedStream:
    """Image-caption sequences with a share `mix` of pre-training documents interleaved.

    Global position p holds a document iff floor(mix*(p+1)) > floor(mix*p): documents fall evenly
    through the stream, their share is exactly `mix` over any long stretch, and each stream keeps its
    own seeded epochs (the k-th document is the documents' position k, the captions' position is p
    minus the documents before it). Like RankStream, a batch is a pure function of its step.
    """

    def __init__(self, captions: RankStream, documents: RankStream, mix: float) -> None:
        self.captions, self.documents, self.mix = captions, documents, mix

    @property
    def global_batch(self) -> int:
        return self.captions.global_batch

    def source_of(self, position: int) -> tuple[RankStream, int]:
        before = math.floor(self.mix * position)
        if math.floor(self.mix * (position + 1)) > before:
            return self.documents, before
        return self.captions, position - before

    def batch(self, step: int) -> Batch:
        rows, ids, epochs = [], [], []
        for position in self.captions.positions(step):
            stream, index = self.source_of(position)
            epoch, sample = stream.sample_at(index)
            rows.append(sequence(sample, stream.layout, stream.seq_len, stream.with_text))
            ids.append(sample.sample_id)
            if stream is self.captions:
                epochs.append(epoch)
        # The sample-id log is kept for the first caption epoch; documents ride along with it.
        return Batch(torch.stack(rows), tuple(ids), epochs[0] if epochs else 0)


def sequence(sample: Sample, layout: VocabLayout, seq_len: int, with_text: bool = True) -> torch.Tensor:
    """`<bos> caption <boi> image <eoi>`, `<bos> text <eos>` (a text-only layout), or without text
    `<boi> image <eoi>` (unconditional: no text target at all), padded to seq_len.

    The caption (or document) is truncated to fit; image tokens never are.
    """
    _check_ids(sample, layout)
    if sample.image_ids is not None and layout.codebook_size:
        image = [layout.image_offset + int(c) for c in sample.image_ids]
        tail = [layout.boi, *image, layout.eoi]
    else:
        tail = [layout.eos]
    head = [layout.bos] if with_text else []
    room = seq_len - len(head) - len(tail)
    if room < 0:
        raise SampleError(f"{sample.source or 'a shard'}: sample {sample.sample_id!r}: data.seq_len={seq_len} "
                           f"cannot hold its {len(tail)} image and special tokens")
    text = [int(t) for t in sample.text_ids[:room]] if with_text else []
    ids = [*head, *text, *tail]
    ids += [layout.pad] * (seq_len - len(ids))
    return torch.tensor(ids, dtype=torch.long)


def _check_ids(sample: Sample, layout: VocabLayout) -> None:
    """Ids outside the vocabulary would index past the embedding (or alias <boi>): named here, with
    the shard and sample, instead of an IndexError deep in the model."""
    where = f"{sample.source or 'a shard'}: sample {sample.sample_id!r}"
    for name, ids, size in (("text id", sample.text_ids, layout.text_size),
                            ("image code", sample.image_ids, layout.codebook_size)):
        if ids is None or not len(ids) or (name == "image code" and not size):
            continue
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise SampleError(f"{where}: {name} {bad} is outside 0..{size - 1} (the dataset's "
                               f"{'text vocabulary' if name == 'text id' else 'image codebook'})")
