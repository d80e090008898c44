"""The training loop: one process per rank, DeepSpeed as a library.

Reads only the run directory's config.yaml (never composes), the dataset it names and, for a
pre-trained init, the upstream model file. Writes metrics.jsonl and the final model (rank 0).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from harness.config import RunConfig, load_run_config
from harness.data.dataset import Dataset, open_dataset
from harness.data.stream import EpochOrder, RankStream
from harness.data.vocab import VocabLayout
from harness.errors import HarnessError
from harness.model.init import build_model
from harness.rundir import RunDir
from harness.train import checkpoint
from harness.train.losses import LossSums, count_targets, split_sums, token_losses
from harness.train.metrics import MetricsWriter
from harness.train.schedule import warmup_cosine
from harness.train.sources import resolve_source


def train(run_dir: Path) -> None:
    run = RunDir(run_dir)
    config = load_run_config(run.config_path)
    _init_distributed(config)
    rank, world = dist.get_rank(), dist.get_world_size()
    _record_runtime(run, rank)
    if world != config.world_size:
        raise RuntimeError(f"world size {world} differs from the config's {config.world_size}")
    if config.launch.gpus_per_node and not torch.cuda.is_available():
        raise RuntimeError(f"the profile expects {config.launch.gpus_per_node} GPU(s) per node; CUDA is unavailable")
    # A task may have staged the dataset to node-local scratch (launch.scratch).
    dataset = open_dataset(config.data, Path(os.environ.get("HARNESS_DATA_ROOT") or config.paths.data_root))
    expected = run.provenance().get("data", {}).get("hash")
    if expected and dataset.data_hash != expected:
        raise HarnessError(f"dataset at {dataset.root} has hash {dataset.data_hash[:12]}, but this run was "
                           f"submitted on {expected[:12]}: restore that version (dvc pull) or resubmit with --force")
    layout = dataset.layout(config.data.corpus)
    stream = _stream(config, dataset, layout, rank, world)
    source = checkpoint.load_model_file(resolve_source(config)) if config.init.strategy == "pretrained" else None
    model = build_model(config, layout, source)
    engine = _engine(model, config)
    if rank == 0:
        _archive_stale_metrics(run)
    metrics = MetricsWriter(run.metrics_path) if rank == 0 else None
    ids_log = _sample_id_log(run, config, rank)

    tokens_seen, started = 0, time.time()
    for step in range(config.train.steps):
        step_start = time.time()
        batch = stream.batch(step)
        lr = engine.get_lr()[0]  # the rate this step's update uses
        if ids_log is not None and batch.epoch == 0:
            ids_log.write("".join(f"{i}\n" for i in batch.sample_ids))
        sums, step_tokens = _train_step(engine, batch.tokens, config, layout, world)
        tokens_seen += step_tokens
        last = step + 1 == config.train.steps
        if metrics is not None and ((step + 1) % config.train.log_every == 0 or last or step == 0):
            elapsed = time.time() - step_start
            metrics.write(
                {"step": step + 1, "tokens": tokens_seen, **sums.summary(),
                 "lr": lr, "grad_norm": _grad_norm(engine)},
                {"step_s": round(elapsed, 4), "tokens_per_s": round(step_tokens / max(elapsed, 1e-9), 1),
                 "elapsed_s": round(time.time() - started, 2)},
            )
    if ids_log is not None:
        ids_log.close()
    if rank == 0:
        # ZeRO 0-2 keep whole parameters on every rank; the file is written in fp32 either way.
        checkpoint.save_model(run.checkpoints / "final", engine.module, layout, config.train.steps, tokens_seen)
    dist.barrier()
    # Tear the process group down explicitly: left to interpreter exit, gloo's threads can abort.
    dist.destroy_process_group()


def _train_step(engine, tokens: torch.Tensor, config: RunConfig, layout: VocabLayout,
                world: int) -> tuple[LossSums, int]:
    """One optimizer step over grad_accum micro-batches, weighted by the global count of targets.

    DeepSpeed averages gradients over ranks and micro-steps; scaling each micro-batch's summed loss
    by world * accum / global_targets makes the applied gradient that of the global token mean.
    """
    micro_batches = tokens.split(config.train.micro_batch)
    # Collectives run on the engine's device: NCCL cannot reduce CPU tensors.
    count = torch.tensor([sum(count_targets(mb, layout) for mb in micro_batches)], dtype=torch.float64,
                         device=engine.device)
    dist.all_reduce(count)
    global_targets = int(count.item())
    scale = world * len(micro_batches) / global_targets
    sums = LossSums.zero()
    for micro in micro_batches:
        micro = micro.to(engine.device)
        inputs, targets = micro[:, :-1], micro[:, 1:]
        losses = token_losses(engine(inputs), targets)
        keep = targets != layout.pad
        engine.backward((losses * keep).sum() * scale)
        engine.step()
        sums += split_sums(losses.cpu(), targets.cpu(), layout)
    reduced = sums.values.to(engine.device)
    dist.all_reduce(reduced)
    return LossSums(reduced.cpu()), global_targets


def _stream(config: RunConfig, dataset: Dataset, layout: VocabLayout, rank: int, world: int) -> RankStream:
    corpus = config.data.corpus
    entries = dataset.shard_entries(corpus, "train")
    order = EpochOrder([e["samples"] for e in entries], seed=config.seed)
    local_batch = config.train.micro_batch * config.train.grad_accum
    return RankStream(dataset.reader(corpus, "train"), order, layout, config.data.seq_len, rank, world, local_batch)


def _engine(model: torch.nn.Module, config: RunConfig):
    import deepspeed

    train = config.train
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    schedule = warmup_cosine(train.steps, train.warmup_steps, train.min_lr_ratio)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=deepspeed_config(config),
                                      lr_scheduler=schedule)
    return engine


def deepspeed_config(config: RunConfig) -> dict:
    train = config.train
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch * train.grad_accum * config.world_size,
        # torch_adam: DeepSpeed's fused Adam would JIT-compile on first use (~70 s on CPU).
        "optimizer": {"type": "AdamW", "params": {
            "lr": train.lr, "betas": list(train.betas), "eps": 1e-8,
            "weight_decay": train.weight_decay, "torch_adam": True}},
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _init_distributed(config: RunConfig) -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The shared-memory CPU collective JIT-compiles (~40 s) at first init; gloo alone suffices.
        # (import_module: `deepspeed.comm.torch` as an attribute is the torch package itself.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               auto_mpi_discovery=False)


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def _archive_stale_metrics(run: RunDir) -> None:
    """A fresh start keeps a failed attempt's metrics, moved beside that attempt's logs."""
    if run.metrics_path.exists():
        target = run.logs(max(_attempt(run) - 1, 0))
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run.metrics_path), target / "metrics.jsonl")


def _attempt(run: RunDir) -> int:
    return int(os.environ.get("HARNESS_ATTEMPT") or len(run.attempts()) or 1)


def _record_runtime(run: RunDir, rank: int) -> None:
    """Evidence, from inside, of where this rank's trainer ran (host or which container)."""
    inside = {"container": os.environ.get("HARNESS_CONTAINER"), "dockerenv": Path("/.dockerenv").exists(),
              "containerenv": Path("/run/.containerenv").exists(),
              "apptainer": os.environ.get("APPTAINER_CONTAINER"), "python": sys.executable,
              "harness": str(Path(__file__).resolve().parents[2]), "torch": torch.__version__}
    path = run.logs(_attempt(run)) / f"rank{rank}.runtime.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inside) + "\n")


def _sample_id_log(run: RunDir, config: RunConfig, rank: int):
    if not config.train.log_sample_ids:
        return None
    path = run.logs(_attempt(run)) / f"sample_ids.rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w")


def main(run_dir: str, error_file: str | None = None) -> int:
    """Run one rank; on failure leave a one-line reason where the host-side task can read it."""
    try:
        train(Path(run_dir))
    except Exception as exc:
        reason = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())
        print(f"trainer failed: {reason}", file=sys.stderr, flush=True)
        if error_file:
            Path(error_file).write_text(reason + "\n")
        raise
    return 0


