"""The training loop: one process per rank, DeepSpeed as a library.

Reads only the run directory's config.yaml (never composes), the dataset it names and, for a
pre-trained init, the upstream model file. Resumes from the newest complete checkpoint, so an
interrupted run continues exactly where its last checkpoint left it: the data position is the step
(batches are a pure function of it), and model, optimizer, scheduler and RNG states are restored.
Writes metrics.jsonl (rank 0), checkpoints, and at the end the consolidated final model.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from harness.config import RunConfig, load_run_config
from harness.data.dataset import WITH_TEXT, open_dataset
from harness.data.stream import EpochOrder, MixedStream, RankStream
from harness.data.vocab import VocabLayout
from harness.errors import HarnessError, one_line
from harness.eval.losses import held_out_losses, write_val_loss
from harness.train.align import load_alignment
from harness.model.freeze import FreezePlan, apply_freeze, plan_freeze
from harness.model.init import build_model
from harness.rundir import RunDir
from harness.train import checkpoints, model_file
from harness.train.batches import step_batches
from harness.train.export import consolidated_state_dict
from harness.train.losses import LossSums, count_targets, split_sums, token_losses
from harness.tracking import Trackers
from harness.train.metrics import MetricsWriter, truncate_after
from harness.train.preemption import CHECKPOINTED_EXIT, StopFlag, agree
from harness.train.schedule import warmup_cosine
from harness.train.sources import load_source, resolve_alignment
from harness.train.writes import NotWritten


class Checkpointed(Exception):
    """Every rank saved a checkpoint on request and stops; the host requeues the job."""


class NonFiniteLoss(HarnessError):
    pass


def train(run_dir: Path) -> None:
    run = RunDir(run_dir)
    config = load_run_config(run.config_path)
    stop = StopFlag(config.train.preempt_signal)  # before anything slow: a signal must not kill us
    _init_distributed(config)
    rank, world = dist.get_rank(), dist.get_world_size()
    _record_runtime(run, rank)
    _check_world(config, world)
    dataset = open_dataset(config.data, Path(os.environ.get("HARNESS_DATA_ROOT") or config.paths.data_root))
    expected = run.provenance().get("data", {}).get("hash")
    if expected and dataset.data_hash != expected:
        raise HarnessError(f"dataset at {dataset.root} has hash {dataset.data_hash[:12]}, but this run was "
                           f"submitted on {expected[:12]}: restore that version (dvc pull) or resubmit with --force")
    layout = dataset.layout(config.data.corpus)
    stream = training_stream(config, dataset, rank, world)
    source = load_source(config) if config.init.strategy != "random" else None
    alignment = load_alignment(resolve_alignment(config)) if config.init.strategy == "aligned" else None
    model = build_model(config, layout, source, alignment)
    freeze = plan_freeze(model, config.freeze, layout)
    apply_freeze(model, freeze)
    if rank == 0:
        _record_model_summary(run, config, model, freeze)
    engine = _engine(model, config, freeze)
    client = {"architecture": dataclasses.asdict(engine.module.arch), "layout": dataclasses.asdict(layout),
              "zero_stage": config.train.zero_stage, "text_tokenizer": dataset.manifest["text_tokenizer"]["sha256"]}

    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda _msg: None)
    start = checkpoints.resume(engine, run.checkpoints, world, log)
    if rank == 0:
        _prepare_metrics(run, start.step)
    _loop(run, config, engine, stream, layout, start, stop, client, dataset)
    dist.barrier()


def training_stream(config: RunConfig, dataset, rank: int, world: int) -> RankStream | MixedStream:
    """What one rank trains on: the configured corpus of the train split, in the seeded order, with
    `data.text_mix` of the sequences drawn from the pre-training text corpus."""
    captions = _corpus_stream(config, dataset, config.data.corpus, config.data.corpus, rank, world)
    if not config.data.text_mix:
        return captions
    # The documents are laid out in the captions' vocabulary, in their own seeded order.
    documents = _corpus_stream(config, dataset, "text", config.data.corpus, rank, world)
    return MixedStream(captions, documents, config.data.text_mix)


def _corpus_stream(config: RunConfig, dataset, corpus: str, layout_corpus: str, rank: int,
                   world: int) -> RankStream:
    entries = dataset.shard_entries(corpus, "train")
    return RankStream(dataset.reader(corpus, "train"), EpochOrder([e["samples"] for e in entries], seed=config.seed),
                      dataset.layout(layout_corpus), config.data.seq_len, rank, world,
                      config.train.micro_batch * config.train.grad_accum, with_text=corpus in WITH_TEXT)


def _loop(run: RunDir, config: RunConfig, engine, stream: RankStream | MixedStream, layout: VocabLayout,
          start: checkpoints.Resume, stop: StopFlag, client: dict, dataset) -> None:
    train_cfg, rank, world = config.train, dist.get_rank(), dist.get_world_size()
    metrics = MetricsWriter(run.metrics_path, Trackers(run, config, start.step)) if rank == 0 else None
    try:
        _steps(run, config, engine, stream, layout, start, stop, client, dataset, metrics)
    finally:
        if metrics is not None:
            metrics.close()


def _steps(run: RunDir, config: RunConfig, engine, stream: RankStream | MixedStream, layout: VocabLayout,
           start: checkpoints.Resume, stop: StopFlag, client: dict, dataset, metrics: MetricsWriter | None) -> None:
    train_cfg, rank, world = config.train, dist.get_rank(), dist.get_world_size()
    ids_log = _sample_id_log(run, config, rank, start.step)
    keep_marks = sorted(train_cfg.keep_at_tokens)
    tokens_seen, started, last_save = start.tokens, time.time(), time.time()
    for step, batch in step_batches(stream, start.step, train_cfg.steps, train_cfg.loader_workers):
        step_start = time.time()
        lr = engine.get_lr()[0]  # the rate this step's update uses
        if ids_log is not None and batch.epoch == 0:
            ids_log.write("".join(f"{i}\n" for i in batch.sample_ids))
        sums, documents, step_tokens = _train_step(engine, batch.tokens, config, layout, world, step)
        summary = step_summary(sums, documents)
        if not math.isfinite(summary["loss"] or 0.0):
            kept = [p.name for p in checkpoints.complete(run.checkpoints)]
            raise NonFiniteLoss(f"non-finite loss ({summary['loss']}) at step {step + 1}; stopped without "
                                f"saving; last good checkpoint: {kept[-1] if kept else 'none'}")
        crossed = [t for t in keep_marks if tokens_seen < t <= tokens_seen + step_tokens]
        tokens_seen += step_tokens
        done = step + 1
        if metrics is not None and (done % train_cfg.log_every == 0 or done == train_cfg.steps or step == 0):
            elapsed = time.time() - step_start
            metrics.write({"step": done, "tokens": tokens_seen, **summary, "lr": lr, "grad_norm": _grad_norm(engine)},
                          {"step_s": round(elapsed, 4), "tokens_per_s": round(step_tokens / max(elapsed, 1e-9), 1),
                           "elapsed_s": round(time.time() - started, 2)})
        due = train_cfg.checkpoint_every_min > 0 and time.time() - last_save > 60 * train_cfg.checkpoint_every_min
        preempt, due = agree([stop.check(done), due], engine.device)
        periodic = train_cfg.checkpoint_every_steps > 0 and done % train_cfg.checkpoint_every_steps == 0
        if preempt or due or periodic or crossed or done == train_cfg.steps:
            checkpoints.save(engine, run.checkpoints, done, tokens_seen, client, keep=bool(crossed))
            last_save = time.time()
            if rank == 0:
                checkpoints.prune(run.checkpoints, train_cfg.keep_last)
        if done == train_cfg.steps or (train_cfg.eval_every_steps and done % train_cfg.eval_every_steps == 0):
            _held_out(run, config, engine, dataset, done, metrics)
        if preempt and done < train_cfg.steps:
            raise Checkpointed(f"checkpointed at step {done} on request")
    if ids_log is not None:
        ids_log.close()
    _save_final(run, client, train_cfg.steps, tokens_seen)


def _save_final(run: RunDir, client: dict, steps: int, tokens: int) -> None:
    """Rank 0 writes the final model file; every rank learns whether it could, so that none waits
    for it in a collective (NCCL would wait until the timeout) and all stop with its one line."""
    failure = None
    if dist.get_rank() == 0:
        final = checkpoints.complete(run.checkpoints)[-1]
        try:
            model_file.save_model_file(run.checkpoints / "final", consolidated_state_dict(final), client["architecture"],
                                       client["layout"], steps, tokens, client["text_tokenizer"])
        except NotWritten as exc:
            failure = str(exc)
        except Exception as exc:  # any failure here: the other ranks must hear of it, not time out
            failure = f"final model file in {run.checkpoints / 'final'}: {type(exc).__name__}: {exc}"
    failure = checkpoints.first_failure(failure)
    if failure:
        raise NotWritten(failure)


def _held_out(run: RunDir, config: RunConfig, engine, dataset, step: int, metrics: MetricsWriter | None) -> None:
    """Held-out losses on the validation split, every rank scoring its share."""
    losses = held_out_losses(engine.module, dataset, config.data.corpus, config.data.seq_len,
                             config.train.micro_batch, limit=config.train.eval_samples)
    if metrics is not None:
        write_val_loss(run.path, step, losses, dataset.data_hash)
        metrics.held_out(step, losses)
        print(f"held-out at step {step}: loss_text {losses['loss_text']}  loss_image {losses['loss_image']}", flush=True)


def step_summary(captions: LossSums, documents: LossSums | None) -> dict[str, float | None]:
    """Losses of a step, unweighted: loss_text and loss_image over the image-caption sequences; with a
    text mix, the interleaved documents' own loss apart and `loss` over everything."""
    if documents is None:
        return captions.summary()
    both = LossSums(captions.values + documents.values)
    return {**captions.summary(), "loss": both.summary()["loss"], "loss_documents": documents.summary()["loss_text"]}


def target_weights(targets: torch.Tensor, layout: VocabLayout, text_weight: float) -> torch.Tensor:
    """Each target's weight in the training loss: 1 per image target, text_weight per text target,
    0 for <pad>."""
    weights = (targets != layout.pad).to(torch.float32)
    if text_weight != 1.0:
        weights = weights.masked_fill(layout.is_text_target(targets), text_weight)
    return weights


def _train_step(engine, tokens: torch.Tensor, config: RunConfig, layout: VocabLayout,
                world: int, step: int) -> tuple[LossSums, LossSums | None, int]:
    """One optimizer step over grad_accum micro-batches: the gradient of the global weighted token
    mean (train.text_loss_weight; plain token mean at 1).

    DeepSpeed averages gradients over ranks and micro-steps; scaling each micro-batch's weighted
    summed loss by world * accum / global_weight makes the applied gradient that of the global mean.
    Returns the unweighted loss sums of the caption sequences and, with a text mix, of the documents.
    """
    text_weight, mixing = config.train.text_loss_weight, bool(config.data.text_mix)
    micro_batches = tokens.split(config.train.micro_batch)
    # Collectives run on the engine's device: NCCL cannot reduce CPU tensors.
    totals = torch.tensor([[count_targets(mb, layout), float(target_weights(mb[:, 1:], layout, text_weight).sum(dtype=torch.float64))]
                           for mb in micro_batches], dtype=torch.float64).sum(0).to(engine.device)
    dist.all_reduce(totals)
    global_targets, global_weight = int(totals[0].item()), float(totals[1].item())
    scale = world * len(micro_batches) / global_weight
    poison = _injected_nan(step)
    sums, documents = LossSums.zero(), LossSums.zero()
    for micro in micro_batches:
        micro = micro.to(engine.device)
        inputs, targets = micro[:, :-1], micro[:, 1:]
        losses = token_losses(engine(inputs), targets) * poison
        weights = target_weights(targets, layout, text_weight)
        engine.backward((losses * weights).sum() * scale)
        engine.step()
        losses, targets = losses.cpu(), targets.cpu()
        if mixing:  # a document is a row without image targets
            is_document = ~layout.is_image_target(targets).any(dim=1)
            documents += split_sums(losses[is_document], targets[is_document], layout)
            losses, targets = losses[~is_document], targets[~is_document]
        sums += split_sums(losses, targets, layout)
    reduced = torch.cat([sums.values, documents.values] if mixing else [sums.values]).to(engine.device)
    dist.all_reduce(reduced)
    reduced = reduced.cpu()
    return LossSums(reduced[:4]), (LossSums(reduced[4:]) if mixing else None), global_targets


def _injected_nan(step: int) -> float:
    """HARNESS_INJECT_NAN_AT_STEP=<n> poisons step n's loss: the failure path's test hook."""
    return math.nan if os.environ.get("HARNESS_INJECT_NAN_AT_STEP") == str(step + 1) else 1.0


def _engine(model: torch.nn.Module, config: RunConfig, freeze: FreezePlan):
    import deepspeed

    train = config.train
    # open_lm decays every trainable tensor, LayerNorm gains and biases included (its main.py:
    # one AdamW group, the no-decay group left empty); only a table with frozen rows is exempt,
    # since decay would move the rows that freezing must keep.
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if not freeze.no_decay(n)]
    no_decay = [p for n, p in trainable if freeze.no_decay(n)]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
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
        # torch_adam unless fused: FusedAdam is a CUDA op (prebuilt in the image; JIT-built otherwise).
        "optimizer": {"type": "AdamW", "params": {
            "lr": train.lr, "betas": list(train.betas), "eps": 1e-8,
            "weight_decay": train.weight_decay, "torch_adam": not train.fused_optimizer}},
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _record_model_summary(run: RunDir, config: RunConfig, model: torch.nn.Module, freeze: FreezePlan) -> None:
    total = sum(p.numel() for p in model.parameters())
    summary = {"parameters": total, "trainable": freeze.trainable_count(model), "freeze": list(config.freeze),
               "frozen_tensors": sorted(freeze.tensors), "frozen_text_rows": freeze.text_rows,
               "no_weight_decay": sorted(n for n, _ in model.named_parameters() if freeze.no_decay(n))}
    (run.path / "model.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"parameters: {total:,} ({summary['trainable']:,} trainable"
          + (f"; frozen: {', '.join(config.freeze)})" if config.freeze else ")"), flush=True)


def _init_distributed(config: RunConfig) -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The shared-memory CPU collective JIT-compiles (~40 s) at first init; gloo alone suffices.
        # (import_module: `deepspeed.comm.torch` as an attribute is the torch package itself.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    # A timeout bounds how long ranks wait for a dead peer inside a collective.
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               auto_mpi_discovery=False,
                               timeout=timedelta(minutes=config.train.collective_timeout_min))


def _check_world(config: RunConfig, world: int) -> None:
    if world != config.world_size:
        raise RuntimeError(f"world size {world} differs from the config's {config.world_size}")
    if config.launch.gpus_per_node and not torch.cuda.is_available():
        raise RuntimeError(f"the profile expects {config.launch.gpus_per_node} GPU(s) per node; CUDA is unavailable")
    cuda_only = {"model.attention": config.model.attention in ("flash", "efficient"),
                 "train.fused_optimizer": config.train.fused_optimizer}
    for key, needed in cuda_only.items():
        if needed and not torch.cuda.is_available():
            raise HarnessError(f"{key} needs CUDA, which this node lacks (set it per scale: jobs/scale/)")


def _grad_norm(engine) -> float | None:
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def _attempt(run: RunDir) -> int:
    return int(os.environ.get("HARNESS_ATTEMPT") or len(run.attempts()) or 1)


def _prepare_metrics(run: RunDir, resumed_step: int) -> None:
    """Resuming at step s drops lines after s (they are replayed); a fresh start keeps a previous
    attempt's lines beside that attempt's logs."""
    if not run.metrics_path.exists():
        return
    if resumed_step:
        truncate_after(run.metrics_path, resumed_step)
        return
    target = run.logs(max(_attempt(run) - 1, 0))
    target.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run.metrics_path), target / "metrics.jsonl")


def _record_runtime(run: RunDir, rank: int) -> None:
    """Evidence, from inside, of where this rank's trainer ran (host or which container)."""
    inside = {"container": os.environ.get("HARNESS_CONTAINER"), "dockerenv": Path("/.dockerenv").exists(),
              "containerenv": Path("/run/.containerenv").exists(),
              "apptainer": os.environ.get("APPTAINER_CONTAINER"), "python": sys.executable,
              "harness": str(Path(__file__).resolve().parents[2]), "torch": torch.__version__}
    path = run.logs(_attempt(run)) / f"runtime.rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(inside) + "\n")


def _sample_id_log(run: RunDir, config: RunConfig, rank: int, start_step: int):
    """Sample ids this rank reads during epoch 0 in this attempt (small scales: a checkable log)."""
    if not config.train.log_sample_ids:
        return None
    path = run.logs(_attempt(run)) / f"sample_ids.rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w")


def main(run_dir: str, error_file: str | None = None) -> int:
    """Run one rank; on failure leave a one-line reason where the host-side task can read it."""
    failed = True
    try:
        train(Path(run_dir))
        failed = False
    except Checkpointed as exc:
        failed = False  # every rank agreed to stop here: no collective is left in flight
        print(f"trainer: {exc}; exiting for requeue", file=sys.stderr, flush=True)
        return CHECKPOINTED_EXIT
    except Exception as exc:
        reason = one_line(exc)
        print(f"trainer failed: {reason}", file=sys.stderr, flush=True)
        if error_file:
            Path(error_file).write_text(reason + "\n")
        raise
    finally:
        _leave_process_group(failed)
    return 0


def _leave_process_group(failed: bool) -> None:
    """Tear the process group down on the way out: left to interpreter exit, gloo's threads can
    abort the process (SIGABRT) and hide how the rank really ended. Not after a failure on NCCL,
    whose teardown waits for collectives the other ranks may still be in; the host's task ends
    those ranks instead. A teardown error is reported, never raised: it must not replace the
    rank's own ending."""
    if not (dist.is_available() and dist.is_initialized()) or (failed and dist.get_backend() == "nccl"):
        return
    try:
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - reported, and the rank's own ending stands
        print(f"trainer: process group teardown failed: {one_line(exc)}", file=sys.stderr, flush=True)
