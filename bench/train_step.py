"""The harness's training step against a bare PyTorch loop, on CPU, same model, weights and batches.

Harness side: the trainer's own path (harness.train.loop: `_init_distributed`, `_engine`,
`_train_step`), so DeepSpeed's engine, ZeRO-1, the target-count all_reduce and the loss-sum
bookkeeping are all in the measured time. Bare side: torch.optim.AdamW, token-mean cross entropy
ignoring <pad>, backward, clip, step. Both train on the same pre-materialised batches from the real
data path, in alternating rounds (these machines are noisy), so the figure is a ratio taken side by
side: overhead = harness_time / bare_time - 1. Warm-up steps are excluded. Nothing here asserts.

    python -m bench.train_step            # ~45M params (d_model 768, 6 layers, 12 heads), ZeRO-1 as configured
    python -m bench.train_step --override train.zero_stage=0   # the same engine without ZeRO partitioning
    python -m bench.train_step --quick    # a seconds-long check of the script itself
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench.common import report
from harness.config import RunConfig, compose_runs
from harness.data.dataset import ensure_dataset
from harness.data.vocab import VocabLayout
from harness.model.freeze import apply_freeze, plan_freeze
from harness.model.init import build_model
from harness.train import loop
from harness.train.batches import step_batches
from harness.train.losses import count_targets
from harness.train.schedule import warmup_cosine

NAME = "train_step"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per step (smoke: 16)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side before the rounds")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (each side once per round)")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--override", action="append", default=[],
                        help="more config overrides for the harness side, e.g. train.zero_stage=0")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: checks the script only")
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.layers, args.heads, args.micro_batch = 128, 2, 4, 8
        args.warmup, args.rounds, args.steps_per_round = 1, 2, 2
    return args


def compose(args: argparse.Namespace, steps: int) -> RunConfig:
    """The smoke run with the benchmark's model: through compose, so the engine's config agrees.
    One rank (the smoke profile has two), and train.steps = the steps we run (the LR schedule;
    warmup shortened to fit, as the config requires)."""
    overrides = ["scale=smoke", f"model.d_model={args.d_model}", f"model.n_layers={args.layers}",
                 f"model.n_heads={args.heads}", f"train.micro_batch={args.micro_batch}", "train.grad_accum=1",
                 f"train.steps={steps}", f"train.warmup_steps={min(10, steps - 1)}", "launch.nodes=1",
                 "launch.tasks_per_node=1", *args.override]
    return compose_runs(overrides)[0].config


def single_rank_env() -> None:
    """A one-rank gloo group on a free local port, as the launcher would set it up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def materialise(config: RunConfig, steps: int) -> tuple[list[torch.Tensor], VocabLayout]:
    """The batches of steps 0..steps-1 from the real data path, built once, before any timing."""
    dataset = ensure_dataset(config.data, Path(os.environ.get("HARNESS_DATA_ROOT") or "data"))
    stream = loop.training_stream(config, dataset, 0, 1)
    batches = [batch.tokens for _, batch in step_batches(stream, 0, steps, 0)]
    return batches, dataset.layout(config.data.corpus)


@dataclass
class Side:
    """One way of training: a step function, the batches it has consumed, and its timed seconds."""

    name: str
    step: Callable[[int, torch.Tensor], float]  # (step, tokens) -> loss of that step
    done: int = 0
    first_loss: float | None = None
    round_s: list[float] = field(default_factory=list)

    def run(self, batches: list[torch.Tensor], count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            loss = self.step(self.done, batches[self.done])
            self.first_loss = loss if self.first_loss is None else self.first_loss
            self.done += 1
        return time.perf_counter() - start


def harness_side(model: torch.nn.Module, config: RunConfig, layout: VocabLayout) -> Side:
    """The trainer's engine and step, exactly as harness.train.loop builds and calls them."""
    engine = loop._engine(model, config, plan_freeze(model, config.freeze, layout))

    def step(index: int, tokens: torch.Tensor) -> float:
        sums, _, _ = loop._train_step(engine, tokens, config, layout, 1, index)
        return float(sums.summary()["loss"])
    return Side("harness", step)


def bare_side(model: torch.nn.Module, config: RunConfig, layout: VocabLayout) -> Side:
    """Plain PyTorch: AdamW with the trainer's hyper-parameters and decay groups, same LR schedule."""
    train = config.train
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=train.lr, betas=tuple(train.betas), eps=1e-8)
    schedule = warmup_cosine(train.steps, train.warmup_steps, train.min_lr_ratio)(optimizer)
    params = decay + no_decay

    def step(_index: int, tokens: torch.Tensor) -> float:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=layout.pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        schedule.step()
        return float(loss.detach())
    return Side("bare", step)


def build_sides(config: RunConfig, layout: VocabLayout) -> tuple[Side, Side, int]:
    """Both sides from one initialisation: the bare copy is taken before DeepSpeed touches it."""
    model = build_model(config, layout)
    apply_freeze(model, plan_freeze(model, config.freeze, layout))  # no parts: a no-op, as in train()
    bare_model = copy.deepcopy(model)
    params = sum(p.numel() for p in model.parameters())
    print(f"{NAME}: model parameters = {params:,} (d_model {config.model.d_model}, "
          f"{config.model.n_layers} layers, {config.model.n_heads} heads, vocab {layout.size})", flush=True)
    return harness_side(model, config, layout), bare_side(bare_model, config, layout), params


def interleave(sides: tuple[Side, Side], batches: list[torch.Tensor], args: argparse.Namespace) -> None:
    """Warm-up untimed, then rounds with the order swapped each round, so drift hits both sides."""
    for side in sides:
        side.run(batches, args.warmup)
    for index in range(args.rounds):
        for side in sides if index % 2 == 0 else sides[::-1]:
            side.round_s.append(side.run(batches, args.steps_per_round))
            print(f"{NAME}: round {index + 1}/{args.rounds} {side.name}: {side.round_s[-1]:.2f} s", flush=True)


def figures(harness: Side, bare: Side, batches: list[torch.Tensor], layout: VocabLayout,
            args: argparse.Namespace, params: int, config: RunConfig) -> dict:
    timed = batches[args.warmup:args.warmup + args.rounds * args.steps_per_round]
    tokens = sum(count_targets(b, layout) for b in timed)
    positions = sum(b[:, 1:].numel() for b in timed)  # inputs the model computes, padding included
    h_s, b_s = sum(harness.round_s), sum(bare.round_s)
    per_round = [h / b for h, b in zip(harness.round_s, bare.round_s)]
    return {"parameters": params, "d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads,
            "micro_batch": args.micro_batch, "timed_steps_per_side": len(timed), "timed_tokens_per_side": tokens,
            "harness_tokens_per_s": tokens / h_s, "bare_tokens_per_s": tokens / b_s,
            # harness.estimate's rate: its token budgets count positions (batch x seq_len; the model
            # sees seq_len - 1 of each sequence, 1% fewer at smoke).
            "timed_positions_per_side": positions, "harness_positions_per_s": positions / h_s,
            "overhead": h_s / b_s - 1, "overhead_median_round": statistics.median(per_round) - 1,
            # Same weights, same first batch: the two step-1 losses must agree (the same function).
            "harness_step1_loss": harness.first_loss, "bare_step1_loss": bare.first_loss,
            "step1_loss_abs_diff": abs(harness.first_loss - bare.first_loss),
            "zero_stage": config.train.zero_stage, "overrides": list(args.override),
            "torch_threads": torch.get_num_threads(), "quick": args.quick}


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.warmup + args.rounds * args.steps_per_round
    config = compose(args, steps)
    batches, layout = materialise(config, steps)
    single_rank_env()
    loop._init_distributed(config)  # gloo, without the JIT-built shared-memory op
    try:
        harness, bare, params = build_sides(config, layout)
        interleave((harness, bare), batches, args)
    finally:
        torch.distributed.destroy_process_group()
    # Each variant keeps its own results file: train_step.json is the configured engine (ZeRO-1).
    variant = "".join(f"_{o.split('.')[-1].replace('=', '').replace('_', '')}" for o in args.override)
    report(NAME + variant + ("_quick" if args.quick else ""), figures(harness, bare, batches, layout, args, params, config),
           {"overhead": "<= 0.05 (harness step within 5% of a bare PyTorch loop)",
            "step1_loss_abs_diff": "~0 (same weights, same batch)"})


if __name__ == "__main__":
    main()
