import numpy as np
import pytest
import torch

from harness.data.shards import Sample
from harness.data.stream import EpochOrder, MixedStream, RankStream, sequence
from harness.data.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=100, pad=0, bos=1, eos=2, codebook_size=50)


class ListReader:
    def __init__(self, sizes):
        self.samples = [[Sample(f"{s}-{o}", np.array([10 + o]), np.array([s, o])) for o in range(n)]
                        for s, n in enumerate(sizes)]

    def sample(self, shard, offset):
        return self.samples[shard][offset]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_and_cover_each_epoch(world):
    sizes = [5, 7, 6]
    order, reader = EpochOrder(sizes, seed=3), ListReader(sizes)
    streams = [RankStream(reader, order, LAYOUT, 8, rank, world, local_batch=3) for rank in range(world)]
    steps = sum(sizes) // (3 * world)
    per_rank = [[i for step in range(steps) for i in s.batch(step).sample_ids] for s in streams]
    seen = [i for ids in per_rank for i in ids]
    assert len(seen) == len(set(seen))
    assert set(seen) == {f"{s}-{o}" for s, n in enumerate(sizes) for o in range(n)}


def test_epoch_orders_are_permutations_differing_by_epoch_and_seed():
    order = EpochOrder([4, 4], seed=0)
    first, second = order.order(0), order.order(1)
    assert sorted(map(tuple, first)) == sorted(map(tuple, second)) == [(s, o) for s in range(2) for o in range(4)]
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, EpochOrder([4, 4], seed=1).order(0))


def test_a_batch_depends_only_on_its_step():
    order, reader = EpochOrder([9], seed=0), ListReader([9])
    stream = RankStream(reader, order, LAYOUT, 8, 0, 1, local_batch=4)
    later = stream.batch(3).sample_ids
    assert RankStream(reader, EpochOrder([9], seed=0), LAYOUT, 8, 0, 1, 4).batch(3).sample_ids == later


def test_caption_sequence_layout():
    sample = Sample("x", np.array([11, 12, 13]), np.array([0, 49]))
    got = sequence(sample, LAYOUT, seq_len=10).tolist()
    assert got == [LAYOUT.bos, 11, 12, 13, LAYOUT.boi, 100, 149, LAYOUT.eoi, LAYOUT.pad, LAYOUT.pad]


def test_captions_are_truncated_but_images_never():
    sample = Sample("x", np.arange(20, 40), np.array([1, 2, 3]))
    got = sequence(sample, LAYOUT, seq_len=8).tolist()
    assert got == [LAYOUT.bos, 20, 21, LAYOUT.boi, 101, 102, 103, LAYOUT.eoi]
    with pytest.raises(ValueError, match="cannot hold"):
        sequence(sample, LAYOUT, seq_len=5)


def test_text_sequence_layout():
    text_only = LAYOUT.text_only()
    got = sequence(Sample("t", np.array([7, 8]), None), text_only, seq_len=6)
    assert torch.equal(got, torch.tensor([1, 7, 8, 2, 0, 0]))


class TextReader(ListReader):
    def __init__(self, sizes):
        self.samples = [[Sample(f"doc{s}-{o}", np.array([20 + o]), None) for o in range(n)]
                        for s, n in enumerate(sizes)]


@pytest.mark.parametrize("mix", [0.1, 0.3])
def test_a_text_mix_interleaves_documents_at_its_share_and_keeps_both_orders(mix):
    caption_sizes, document_sizes = [40, 40], [30]

    def mixed(rank, world):
        captions = RankStream(ListReader(caption_sizes), EpochOrder(caption_sizes, seed=5), LAYOUT, 12, rank, world, 5)
        documents = RankStream(TextReader(document_sizes), EpochOrder(document_sizes, seed=5), LAYOUT, 12, rank,
                               world, 5)
        return MixedStream(captions, documents, mix)

    steps = 8
    ids = [i for step in range(steps) for i in mixed(0, 1).batch(step).sample_ids]
    documents = [i for i in ids if i.startswith("doc")]
    assert len(documents) == int(mix * steps * 5)             # exactly its share over the stretch
    where = [k for k, i in enumerate(ids) if i.startswith("doc")]
    gaps = [b - a for a, b in zip(where, where[1:])]
    assert max(gaps) - min(gaps) <= 1                        # spread evenly, never bunched
    # Each stream keeps its own seeded order: the captions are the plain stream's, documents skipped.
    plain = RankStream(ListReader(caption_sizes), EpochOrder(caption_sizes, seed=5), LAYOUT, 12, 0, 1, 5)
    expected = [i for step in range(steps) for i in plain.batch(step).sample_ids]
    assert [i for i in ids if not i.startswith("doc")] == expected[:len(ids) - len(documents)]
    # Two ranks split the same global sequence, and a batch depends only on its step.
    two = [i for step in range(steps // 2) for rank in (0, 1) for i in mixed(rank, 2).batch(step).sample_ids]
    assert two == ids
    batch = mixed(0, 1).batch(3)
    assert (batch.tokens == mixed(0, 1).batch(3).tokens).all()
    rows = [row for row, i in zip(batch.tokens, batch.sample_ids) if i.startswith("doc")]
    assert all(LAYOUT.eos in row and not LAYOUT.is_image_target(row).any() for row in rows)
