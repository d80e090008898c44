"""Contrastive alignment of image-token embeddings to a pre-trained LM's text embeddings
(`experiment=align`; its output initialises the new rows of `init.strategy=aligned`).

An image is represented by the mean of its image-token embeddings (learnable, one row per code),
its caption by the mean of its caption-token embeddings (frozen: the pre-trained LM's text rows).
A symmetric InfoNCE over a batch pulls each image towards its own caption, a "bag of words"
alignment. Both sides are L2-normalised inside the loss, so the learned rows have no scale of
their own: the output rescales every row to the LM's mean text-row norm, so the aligned rows enter
the LM at the size its own rows have. Done for the input embedding and, separately, for the
output projection's rows.

Held-out retrieval: the val split in chunks of `eval_batch` pairs; top-1 accuracy of picking the
right caption for an image and the right image for a caption (averaged); chance is 1/eval_batch.
`align.shuffle_captions=true` is the control: training pairs each image with another's caption.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.config.schema import RunConfig
from harness.data.dataset import Dataset, open_dataset
from harness.data.shards import Sample
from harness.data.stream import EpochOrder
from harness.errors import HarnessError, run_job
from harness.train import model_file
from harness.train.metrics import MetricsWriter
from harness.train.sources import load_source
from harness.train.writes import save_whole

ALIGNMENT_FILE = "alignment.pt"
TABLES = {"input": "tok_embeddings.weight", "output": "output.weight"}


def bag_mean(table: torch.Tensor, ids: list[np.ndarray], offset: int = 0) -> torch.Tensor:
    """Mean row of `table` over each sample's ids: [len(ids), d]."""
    flat = torch.from_numpy(np.concatenate(ids).astype(np.int64)) - offset
    starts = torch.tensor(np.cumsum([0] + [len(i) for i in ids[:-1]]), dtype=torch.long)
    return F.embedding_bag(flat.to(table.device), table, starts.to(table.device), mode="mean")


def info_nce(images: torch.Tensor, texts: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of paired (image, caption) vectors."""
    logits = log_scale.exp() * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    target = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def top1(images: torch.Tensor, texts: torch.Tensor) -> float:
    """Retrieval accuracy in both directions, averaged."""
    similarity = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    target = torch.arange(len(images), device=images.device)
    hits = (similarity.argmax(1) == target).float().mean() + (similarity.argmax(0) == target).float().mean()
    return hits.item() / 2


class Pairs:
    """(image ids, caption ids) batches in a seeded order over a split; optionally mismatched."""

    def __init__(self, dataset: Dataset, split: str, seed: int, shuffle_captions: bool = False) -> None:
        entries = dataset.shard_entries("captions", split)
        self.reader = dataset.reader("captions", split)
        self.order = EpochOrder([e["samples"] for e in entries], seed=seed)
        self.size = self.order.epoch_size
        # The control pairs position p's image with position p+1's caption of the same epoch order.
        self.caption_shift = 1 if shuffle_captions else 0

    def batch(self, start: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        images = [self._sample(p).image_ids for p in range(start, start + count)]
        captions = [self._caption(p + self.caption_shift) for p in range(start, start + count)]
        return images, captions

    def _sample(self, position: int) -> Sample:
        _, shard, offset = self.order.at(position)
        return self.reader.sample(shard, offset)

    def _caption(self, position: int) -> np.ndarray:
        ids = self._sample(position).text_ids
        return ids if len(ids) else np.zeros(1, dtype=np.int64)  # an empty caption: the pad row


def align(config: RunConfig, run_dir: Path, log=print) -> dict:
    data_root = Path(config.paths.data_root)
    dataset = open_dataset(config.data, data_root)
    layout = dataset.layout("captions")
    lm = load_source(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = config.align
    train, val = (Pairs(dataset, "train", config.seed, settings.shuffle_captions), Pairs(dataset, "val", config.seed))
    if val.size < settings.eval_batch:
        raise HarnessError(f"align.eval_batch={settings.eval_batch} exceeds the {val.size} val pairs")
    torch.manual_seed(config.seed)
    frozen = {name: lm["state_dict"][key][: layout.text_size].to(device) for name, key in TABLES.items()}
    d_model = frozen["input"].shape[1]
    learned = {name: torch.nn.Parameter(torch.randn(layout.codebook_size, d_model, device=device) * 0.02)
               for name in TABLES}
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / settings.temperature), device=device))
    optimizer = torch.optim.Adam([*learned.values(), log_scale], lr=settings.lr)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    started = time.time()
    for step in range(settings.steps):
        images, captions = train.batch(step * settings.batch_size, settings.batch_size)
        loss = sum(info_nce(bag_mean(learned[n], images), bag_mean(frozen[n], captions), log_scale) for n in TABLES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            log_scale.clamp_(0, math.log(100))
        done = step + 1
        if done % config.train.log_every == 0 or done == settings.steps:
            record = {"step": done, "loss": loss.item() / len(TABLES), **evaluate(learned, frozen, val, settings.eval_batch)}
            metrics.write(record, {"elapsed_s": round(time.time() - started, 2)})
            log(f"align step {done}/{settings.steps}: loss {record['loss']:.4f}  val top-1 {record['val_top1']:.3f} "
                f"(chance {1 / settings.eval_batch:.3f})")
    return _save(run_dir, learned, frozen, layout, config, record)


@torch.no_grad()
def evaluate(learned: dict, frozen: dict, val: Pairs, eval_batch: int) -> dict[str, float]:
    scores = {name: [] for name in TABLES}
    for start in range(0, val.size - eval_batch + 1, eval_batch):
        images, captions = val.batch(start, eval_batch)
        for name in TABLES:
            scores[name].append(top1(bag_mean(learned[name], images), bag_mean(frozen[name], captions)))
    per_table = {f"val_top1_{n}": float(np.mean(s)) for n, s in scores.items()}
    return {"val_top1": float(np.mean(list(per_table.values()))), **per_table, "chance": 1 / eval_batch}


def _save(run_dir: Path, learned: dict, frozen: dict, layout, config: RunConfig, final: dict) -> dict:
    rows = {}
    for name in TABLES:
        target_norm = frozen[name].norm(dim=1).mean()
        rows[name] = (F.normalize(learned[name].detach(), dim=1) * target_norm).cpu()
    directory = run_dir / "checkpoints" / "final"
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "layout": asdict(layout), "source": config.init.source, "metrics": final}
    save_whole(payload, directory / ALIGNMENT_FILE, "alignment")
    (directory / model_file.COMPLETE).write_text(f"alignment val_top1 {final['val_top1']:.4f}\n")
    return final


def load_alignment(path: Path) -> dict:
    """An alignment file (or the directory holding one); errors name the file."""
    path = path / ALIGNMENT_FILE if path.is_dir() else path
    if not path.exists() or not (path.parent / model_file.COMPLETE).exists():
        raise HarnessError(f"alignment {path} does not exist or is incomplete (run experiment=align first)")
    return torch.load(path, map_location="cpu", weights_only=True)


def main(run_dir: str, error_file: str | None = None) -> int:
    """The align job's single task."""
    from harness.config import load_run_config
    from harness.rundir import RunDir

    run = RunDir(Path(run_dir))
    config = load_run_config(run.config_path)
    return run_job(lambda: align(config, run.path, log=lambda msg: print(msg, flush=True)), error_file, "align")
