"""The data path's throughput per loader process against what one GPU needs at paper scale.

Measured: the full path a rank trains on, `training_stream(...).batch(step)` (shard read and
sha256 check, tar and .npy decode, the seeded permutation, collation into padded batches), at smoke
scale, in samples/s for ONE process: in-process (workers=0), and through `step_batches(...,
workers=N)` divided by N. The two are run in alternating rounds (these machines are noisy), each
round a whole smoke epoch on a fresh stream (cold shard cache: every round decodes every shard; with
workers, every worker decodes every shard, since consecutive steps go to different workers). A run
builds its DataLoader once, so worker start-up is not throughput: both sides are timed from the
arrival of their first N batches to the end, and the one shard decode that wave hides (each worker
decodes the round's first shard in it) is timed apart, in-process, and added back to both sides.

Needed: samples/s per GPU = target tokens/s per A100 / tokens per sample at paper scale. Smoke
samples are shorter (96 tokens, 64 of them image codes) than the paper's (1,088, 1,024 image codes),
and collation is per token, so the conservative figure scales samples/s by smoke/paper seq_len.
Nothing here asserts.

    python -m bench.loader            # 6 rounds of a full smoke epoch per side
    python -m bench.loader --quick    # a seconds-long check of the script itself
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.common import report
from harness.config import RunConfig, compose_runs
from harness.data.dataset import Dataset, ensure_dataset
from harness.train.batches import step_batches
from harness.train.loop import training_stream

NAME = "loader"

# Target training throughput of one A100 at paper scale. open_lm-1b is ~1.44B parameters, ~1.5B
# with the image-code rows; training costs ~6N FLOPs per token; A100 bf16 dense peak is
# 312 TFLOP/s, and 50% MFU is a good run: 312e12 * 0.5 / (6 * 1.5e9) ~= 17,300, rounded down.
TARGET_TOKENS_PER_S_PER_A100 = 17_000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (each side once per round)")
    # Rounds start at shard boundaries when this is a multiple of 32 (512-sample shards, batches of 16).
    parser.add_argument("--steps-per-round", type=int, default=128, help="steps per round (128: a smoke epoch)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the worker side")
    parser.add_argument("--quick", action="store_true", help="few steps: checks the script only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps_per_round = 2, 32
    if args.workers < 1 or args.steps_per_round <= args.workers:
        parser.error("--workers must be >= 1 and below --steps-per-round")
    return args


def configs() -> tuple[RunConfig, RunConfig]:
    """The smoke run on one rank (what we measure) and the paper run (whose seq_len sets the need)."""
    smoke = compose_runs(["scale=smoke", "launch.nodes=1", "launch.tasks_per_node=1"])[0].config
    return smoke, compose_runs(["scale=paper"])[0].config


def timed_round(config: RunConfig, dataset: Dataset, start: int, steps: int, workers: int,
                skip: int) -> tuple[float, float, int, int]:
    """(seconds to the first `skip` batches, seconds after them plus the first shard's decode, samples
    after, non-pad tokens after) of steps start..start+steps-1 on a fresh stream. Skipping the first
    wave (one batch per worker) leaves worker start-up out and gives neither side a head start."""
    stream = training_stream(config, dataset, 0, 1)  # fresh: its shard cache is empty
    pad = dataset.layout(config.data.corpus).pad
    samples = tokens = 0
    began = waited = time.perf_counter()
    for index, (_, batch) in enumerate(step_batches(stream, start, start + steps, workers)):
        if index < skip:
            waited = time.perf_counter()
            continue
        samples += batch.tokens.shape[0]
        tokens += int((batch.tokens != pad).sum())
    took = time.perf_counter() - waited
    return waited - began, took + shard_decode_s(config, dataset, start), samples, tokens


def shard_decode_s(config: RunConfig, dataset: Dataset, step: int) -> float:
    """Seconds a cold reader takes to load the shard that step's first sample lies in (read, sha256
    check, tar and .npy decode): the work of the skipped first wave that is not start-up."""
    stream = training_stream(config, dataset, 0, 1)
    _, shard, _ = stream.order.at(step * stream.global_batch)
    began = time.perf_counter()
    dataset.reader(config.data.corpus, "train").sample(shard, 0)
    return time.perf_counter() - began


def interleave(config: RunConfig, dataset: Dataset,
               args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    """Alternate the in-process and worker sides, order swapped each round, each at new steps.
    Returns per-round seconds per sample and first-wave seconds by side, and tokens per sample."""
    sides = {"in_process": 0, "workers": args.workers}
    measured: dict[str, list[float]] = {f"{name}_{kind}": [] for name in sides
                                        for kind in ("s_per_sample", "first_s")}
    counts = {"samples": 0, "tokens": 0}
    position = 0
    for index in range(args.rounds):
        for name in list(sides) if index % 2 == 0 else list(sides)[::-1]:
            first, took, samples, tokens = timed_round(config, dataset, position, args.steps_per_round,
                                                       sides[name], args.workers)
            position += args.steps_per_round
            measured[f"{name}_s_per_sample"].append(took / samples)  # per sample: rounds add up fairly
            measured[f"{name}_first_s"].append(first)
            counts["samples"], counts["tokens"] = counts["samples"] + samples, counts["tokens"] + tokens
            print(f"{NAME}: round {index + 1}/{args.rounds} {name}: {samples / took:,.0f} samples/s "
                  f"(first {args.workers} batches: {first:.2f} s)", flush=True)
    return measured, counts["tokens"] / counts["samples"]


def figures(measured: dict[str, list[float]], tokens_per_sample: float, smoke: RunConfig, paper: RunConfig,
            args: argparse.Namespace) -> dict:
    in_process = _rate(measured["in_process_s_per_sample"])
    per_worker = _rate(measured["workers_s_per_sample"]) / args.workers
    need = TARGET_TOKENS_PER_S_PER_A100 / paper.data.seq_len
    scale = smoke.data.seq_len / paper.data.seq_len  # collation is per token: the conservative factor
    return {"smoke_seq_len": smoke.data.seq_len, "paper_seq_len": paper.data.seq_len,
            "smoke_nonpad_tokens_per_sample": tokens_per_sample,
            "target_tokens_per_s_per_a100": TARGET_TOKENS_PER_S_PER_A100, "need_samples_per_s_per_gpu": need,
            "in_process_samples_per_s": in_process, "per_worker_samples_per_s": per_worker,
            "workers": args.workers, "workers_first_wave_s": statistics.mean(measured["workers_first_s"]),
            "in_process_first_wave_s": statistics.mean(measured["in_process_first_s"]),
            "headroom_in_process": in_process / need,
            "headroom_per_worker": per_worker / need,
            "in_process_paper_equiv_samples_per_s": in_process * scale,
            "per_worker_paper_equiv_samples_per_s": per_worker * scale,
            "headroom_in_process_token_normalised": in_process * scale / need,
            "headroom_per_worker_token_normalised": per_worker * scale / need, "quick": args.quick}


def _rate(seconds_per_sample: list[float]) -> float:
    """Samples/s of rounds weighted equally: the mean of their seconds per sample, inverted."""
    return 1 / statistics.mean(seconds_per_sample)


def main() -> None:
    args = parse()
    smoke, paper = configs()
    dataset = ensure_dataset(smoke.data, Path(os.environ.get("HARNESS_DATA_ROOT") or "data"))
    measured, tokens_per_sample = interleave(smoke, dataset, args)
    target = ">= 10 (one loader process feeds one A100 at paper scale ten times over)"
    report(NAME + ("_quick" if args.quick else ""), figures(measured, tokens_per_sample, smoke, paper, args),
           {key: target for key in ("headroom_in_process_token_normalised",
                                    "headroom_per_worker_token_normalised")})


if __name__ == "__main__":
    main()
