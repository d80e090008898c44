"""Held-out losses: loss_text and loss_image (and their perplexities) on the validation split.

Every validation sample is read once, in stored order (no sampling), so two models are scored on
exactly the same targets. Ranks split the samples and reduce sums and counts before dividing, so
the result does not depend on the number of ranks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from harness.data.dataset import WITH_TEXT, Dataset
from harness.data.stream import sequence
from harness.rundir import utc_now
from harness.train.losses import LossSums, split_sums, token_losses

SPLIT = "val"


def val_positions(dataset: Dataset, corpus: str, limit: int = 0) -> list[tuple[int, int]]:
    """(shard, offset) of every validation sample in stored order; the first `limit` if set."""
    positions = [(shard, offset) for shard, entry in enumerate(dataset.shard_entries(corpus, SPLIT))
                 for offset in range(entry["samples"])]
    return positions[:limit] if limit else positions


def batches(dataset: Dataset, corpus: str, seq_len: int, batch_size: int, rank: int = 0, world: int = 1,
            limit: int = 0) -> Iterator[torch.Tensor]:
    layout = dataset.layout(corpus)
    reader = dataset.reader(corpus, SPLIT)
    mine = val_positions(dataset, corpus, limit)[rank::world]
    for start in range(0, len(mine), batch_size):
        samples = [reader.sample(shard, offset) for shard, offset in mine[start:start + batch_size]]
        yield torch.stack([sequence(s, layout, seq_len, corpus in WITH_TEXT) for s in samples])


@torch.no_grad()
def held_out_losses(model: torch.nn.Module, dataset: Dataset, corpus: str, seq_len: int, batch_size: int,
                    limit: int = 0) -> dict:
    """Token-weighted held-out losses, and each sample's own (`per_sample`, in stored order: two
    models scored on the same data can be compared sample by sample); all ranks of an initialised
    process group take part."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    layout = dataset.layout(corpus)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # rows [text_sum, text_count, image_sum, image_count] per sample; a rank fills only its own rows
    per_sample = torch.zeros(len(val_positions(dataset, corpus, limit)), 4, dtype=torch.float64)
    index = rank
    for tokens in batches(dataset, corpus, seq_len, batch_size, rank, world, limit):
        tokens = tokens.to(device)
        targets = tokens[:, 1:]
        losses = token_losses(model(tokens[:, :-1]), targets).cpu()
        for row in range(len(tokens)):
            per_sample[index] = split_sums(losses[row], targets[row].cpu(), layout).values
            index += world
    model.train(was_training)
    per_sample = per_sample.to(device)
    if distributed:
        dist.all_reduce(per_sample)
    per_sample = per_sample.cpu()
    reduced = LossSums(per_sample.sum(0))
    summary = reduced.summary()
    return {**summary, "ppl_text": _exp(summary["loss_text"]), "ppl_image": _exp(summary["loss_image"]),
            "targets_text": int(reduced.values[1]), "targets_image": int(reduced.values[3]),
            "per_sample": {"loss_text": _means(per_sample[:, 0], per_sample[:, 1]),
                           "loss_image": _means(per_sample[:, 2], per_sample[:, 3])}}


def _means(sums: torch.Tensor, counts: torch.Tensor) -> list[float | None]:
    return [s / n if n else None for s, n in zip(sums.tolist(), counts.tolist())]


def write_val_loss(run_path: Path, step: int, losses: dict, data_hash: str) -> Path:
    """eval/val_loss@<step>.json, with what it was computed on."""
    path = run_path / "eval" / f"val_loss@{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"step": step, **losses, "provenance": {"dataset": data_hash, "split": SPLIT, "written": utc_now()}}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body, indent=1) + "\n")
    partial.replace(path)
    return path


def _exp(loss: float | None) -> float | None:
    return math.exp(loss) if loss is not None else None
