"""`harness estimate`: what a run costs before it is submitted (parameters, tokens, FLOPs, time).

For each composed run: the parameter count N, exact, from the architecture built on torch's meta
device (nothing is allocated); tokens per step (micro_batch x grad_accum x world x seq_len) and in
total (x train.steps); model FLOPs per token, 6N + 12 * n_layers * d_model * seq_len (forward and
backward, attention included, activation recomputation not); and, from a throughput per device,
the wall time and GPU-hours.

The throughput per GPU comes, in this order, from
  - bench/results/gpu.json (a GPU benchmark, written by bench.common.report): its tokens/s and the
    FLOPs per token of the model it ran give its MFU on its GPU; that MFU, times the peak of the
    cluster's GPU, over the run's FLOPs per token, is the run's tokens/s per GPU ("measured");
  - otherwise a nominal figure: the GPU's dense bf16 peak x an assumed MFU of 40%.
CPU profiles (launch.gpus_per_node = 0) are estimated only from bench/results/train_step.json, the
same way, scaled by FLOPs per token.

A benchmark file is {"machine": {"gpu": ...}, "figures": {...}} (bench.common.report). From its
figures: the tokens/s ("tokens_per_s", "train_tokens_per_s" (bench/gpu.py), "harness_positions_per_s"
(bench/train_step.py: positions, padding included, as the run's token budget counts them), else
"harness_tokens_per_s" (non-pad targets), "tokens_per_s_per_gpu", else the largest figure whose
key contains "tokens_per_s"); the device ("device"/"gpu" figure, else machine.gpu); and what it ran, so that its
FLOPs per token are counted by the same formula as the run's: "parameters" with "n_layers" and
"d_model" or a jobs/model name in "model" (and "seq_len"; else the run's), else its
"flops_per_token" or "mfu" figure as given. Without any of these the benchmark is taken to have
run the estimated run's own model, and the label says so.

The paper's main run is always shown beside: open_lm-1b, 100B tokens, 64 A100, under the same
throughput assumption.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig
from harness import hardware
from harness.errors import HarnessError

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"
ASSUMED_MFU = 0.40
# Cluster profile (launch.cluster) -> GPU type. Other GPU clusters are taken to be A100.
CLUSTER_GPU = {"a100_8x8": "A100"}
DEFAULT_GPU = "A100"
# The paper's main run, as stated: open_lm-1b, 100B tokens, 64 A100 (~1M-token batches).
PAPER_TOKENS = 100e9
PAPER_GPUS = 64
PAPER_GPU = "A100"
PAPER_OVERRIDES = ["experiment=random_init", "cluster=a100_8x8"]


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float          # per device (GPU; per task on CPU)
    mfu: float | None         # None on CPU
    label: str


@dataclass(frozen=True)
class Estimate:
    name: str
    params: int
    vocab_size: int
    flops_per_token: float
    tokens_per_step: int | None
    total_tokens: float
    devices: int                 # GPUs (CPU: tasks)
    device: str                  # "A100", "H200", "CPU"
    throughput: Throughput | None
    vocab_from: str = ""         # the dataset manifest or the data config

    @property
    def wall_s(self) -> float | None:
        if self.throughput is None:
            return None
        return self.total_tokens / (self.throughput.tokens_per_s * self.devices)

    @property
    def gpu_hours(self) -> float | None:
        if self.wall_s is None or self.device == "CPU":
            return None
        return self.wall_s * self.devices / 3600


# ---------------------------------------------------------------------------------------------
# Architecture arithmetic


def vocab_size(config: RunConfig) -> tuple[int, str]:
    """The joint vocabulary the run's model is built with, and where it came from: the dataset's
    manifest where the dataset is present, else the data config (text + codebook + 2 specials for
    corpora with images, as harness.data.vocab lays it out)."""
    from harness.data import shards
    from harness.data.dataset import WITH_IMAGES, Dataset, dataset_dir
    from harness.data.vocab import VocabLayout

    root = dataset_dir(config.data, Path(config.paths.data_root))
    if (root / shards.MANIFEST).exists():
        try:
            manifest, data_hash = shards.read_manifest(root)
            return Dataset(root, manifest, data_hash).layout(config.data.corpus).size, f"manifest {root}"
        except (shards.ManifestError, KeyError):
            pass
    codebook = config.data.codebook_size if config.data.corpus in WITH_IMAGES else 0
    # Only the sizes matter here; the special ids are placeholders.
    return VocabLayout(config.data.text_vocab_size, 0, 0, 0, codebook).size, "data config"


def count_parameters(model: Any, vocab: int) -> int:
    """Exact parameter count of the open_lm architecture for `model` (a ModelConfig), built on the
    meta device: shapes only, no memory."""
    import torch

    from harness.model.open_lm import Architecture, OpenLM

    with torch.device("meta"):
        built = OpenLM(Architecture.from_config(model, vocab_size=vocab))
    return sum(p.numel() for p in built.parameters())


def flops_per_token(params: int, vocab: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """harness.hardware's count for a model of `params` parameters whose input embedding (a lookup,
    no FLOPs) has `vocab` rows."""
    return hardware.flops_per_token(params - vocab * d_model, n_layers, d_model, seq_len)


def gpu_of(config: RunConfig) -> str | None:
    """The cluster's GPU type; None for CPU profiles."""
    if config.launch.gpus_per_node <= 0:
        return None
    return CLUSTER_GPU.get(config.launch.cluster, DEFAULT_GPU)


# ---------------------------------------------------------------------------------------------
# Benchmarks


def read_bench(results_dir: Path, name: str) -> dict | None:
    path = Path(results_dir) / f"{name}.json"
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"{path}: not readable as a benchmark result ({exc})") from None
    figures = payload.get("figures") if isinstance(payload, dict) else None
    if not isinstance(figures, dict):
        raise HarnessError(f"{path}: no 'figures' object")
    rate = _tokens_per_s(figures)
    if rate is None:
        raise HarnessError(f"{path}: no tokens_per_s figure among {', '.join(figures) or '(none)'}")
    return {"path": path, "figures": figures, "machine": payload.get("machine") or {},
            "key": rate[0], "tokens_per_s": rate[1]}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _tokens_per_s(figures: dict) -> tuple[str, float] | None:
    for key in ("tokens_per_s", "train_tokens_per_s", "harness_positions_per_s", "harness_tokens_per_s",
                "tokens_per_s_per_gpu"):
        if _number(figures.get(key)) is not None:
            return key, _number(figures[key])
    found = [(key, _number(v)) for key, v in figures.items() if "tokens_per_s" in key and _number(v) is not None]
    return max(found, key=lambda kv: kv[1]) if found else None


def _bench_device(bench: dict) -> str:
    figures, machine = bench["figures"], bench["machine"]
    for value in (figures.get("device"), figures.get("gpu"), machine.get("gpu")):
        if isinstance(value, str) and value:
            return value
    return "CPU" if not machine.get("cuda") else "unknown GPU"


def _bench_flops(bench: dict, run_fpt: float, run_vocab: int, run_seq: int) -> tuple[float | None, str]:
    """FLOPs per token of the model the benchmark ran, by this module's formula where its figures
    allow (so that its MFU and the run's are counted alike), and how that was known."""
    figures = bench["figures"]
    params = next((_number(figures.get(k)) for k in ("parameters", "params", "n_params")
                   if _number(figures.get(k))), None)
    layers, width = _number(figures.get("n_layers")), _number(figures.get("d_model"))
    model = None
    if isinstance(figures.get("model"), str) and figures["model"]:
        from harness.config import compose_runs

        try:
            model = compose_runs([f"model={figures['model']}"])[0].config.model
        except HarnessError:
            model = None
    if model is not None:
        layers, width = layers or model.n_layers, width or model.d_model
        if params is None:
            params = count_parameters(model, int(_number(figures.get("vocab_size")) or run_vocab))
    if params and layers and width:
        seq = _number(figures.get("seq_len"))
        shape = f"{int(params):,} parameters, {int(layers)} layers x d_model {int(width)}"
        if seq is None:
            seq, shape = run_seq, shape + f", this run's seq_len {run_seq}"
        vocab = int(_number(figures.get("vocab_size")) or run_vocab)
        return flops_per_token(int(params), vocab, int(layers), int(width), int(seq)), shape
    if _number(figures.get("flops_per_token")):
        return _number(figures["flops_per_token"]), "its flops_per_token figure"
    if _number(figures.get("mfu")):
        return None, "its mfu"
    return run_fpt, "taken to be this run's model"


def gpu_throughput(run_fpt: float, gpu: str, run_vocab: int, run_seq: int, results_dir: Path) -> Throughput:
    """Tokens/s per GPU of type `gpu` for a model of `run_fpt` FLOPs per token."""
    peak = hardware.spec_peak(gpu)
    try:
        bench, unusable = read_bench(results_dir, "gpu"), ""
    except HarnessError as exc:  # e.g. its training section failed: no rate to use
        bench, unusable = None, f" (benchmark file not used: {exc})"
    if bench is None:
        return Throughput(ASSUMED_MFU * peak / run_fpt, ASSUMED_MFU,
                          f"nominal (assumed MFU {ASSUMED_MFU:.0%}): {gpu} dense bf16 peak "
                          f"{peak / 1e12:.0f} TFLOP/s x {ASSUMED_MFU:.0%} / FLOPs per token{unusable}")
    device = _bench_device(bench)
    bench_peak = hardware.spec_peak(device)
    bench_fpt, how = _bench_flops(bench, run_fpt, run_vocab, run_seq)
    where = f"{bench['path']}: {bench['key']} = {bench['tokens_per_s']:,.0f} on {device}"
    if how == "its mfu":
        mfu = _number(bench["figures"]["mfu"])
        mfu = mfu / 100 if mfu > 1 else mfu
    elif bench_peak is not None:
        mfu = bench["tokens_per_s"] * bench_fpt / bench_peak
    else:
        # Its GPU's peak is unknown: scale by FLOPs per token only, not across GPU types.
        rate = bench["tokens_per_s"] * bench_fpt / run_fpt
        return Throughput(rate, rate * run_fpt / peak,
                          f"measured ({where}; model: {how}), scaled by FLOPs per token; "
                          f"{device}'s peak is unknown, so not carried to {gpu}")
    same = bench_peak is not None and gpu.lower() in device.lower()
    carried = "" if same else f", carried to {gpu} at the same MFU"
    return Throughput(mfu * peak / run_fpt, mfu,
                      f"measured ({where}; model: {how}; MFU {mfu:.1%}{carried})")


def cpu_throughput(run_fpt: float, run_vocab: int, run_seq: int, results_dir: Path) -> Throughput | None:
    try:
        bench = read_bench(results_dir, "train_step")
    except HarnessError:
        return None
    if bench is None:
        return None
    bench_fpt, how = _bench_flops(bench, run_fpt, run_vocab, run_seq)
    if bench_fpt is None:
        bench_fpt, how = run_fpt, "taken to be this run's model"
    rate = bench["tokens_per_s"] * bench_fpt / run_fpt
    return Throughput(rate, None, f"measured on CPU ({bench['path']}: {bench['key']} = "
                                  f"{bench['tokens_per_s']:,.0f}; model: {how}), scaled by FLOPs per "
                                  f"token; per task, as one process measured it")


# ---------------------------------------------------------------------------------------------
# Estimates


def estimate_run(config: RunConfig, name: str, results_dir: Path = RESULTS_DIR) -> Estimate:
    vocab, vocab_from = vocab_size(config)
    params = count_parameters(config.model, vocab)
    seq = config.data.seq_len
    fpt = flops_per_token(params, vocab, config.model.n_layers, config.model.d_model, seq)
    tokens_per_step = config.train.micro_batch * config.train.grad_accum * config.world_size * seq
    total = config.train.steps * tokens_per_step
    gpu = gpu_of(config)
    if gpu is None:
        return Estimate(name, params, vocab, fpt, tokens_per_step, total, config.world_size, "CPU",
                        cpu_throughput(fpt, vocab, seq, results_dir), vocab_from)
    gpus = config.launch.nodes * config.launch.gpus_per_node
    # One task per GPU: GPUs without a task do not train.
    devices = min(gpus, config.world_size)
    return Estimate(name, params, vocab, fpt, tokens_per_step, total, devices, gpu,
                    gpu_throughput(fpt, gpu, vocab, seq, results_dir), vocab_from)


def paper_reference(results_dir: Path = RESULTS_DIR) -> Estimate:
    """The paper's main run as stated (open_lm-1b, 100B tokens, 64 A100), its model as this
    harness builds it at paper scale, under the same throughput assumption."""
    from harness.config import compose_runs

    run = estimate_run(compose_runs(PAPER_OVERRIDES)[0].config, "paper (reference)", results_dir)
    return dataclasses.replace(run, tokens_per_step=None, total_tokens=PAPER_TOKENS, devices=PAPER_GPUS,
                               device=PAPER_GPU)


def estimate(overrides: list[str], results_dir: Path = RESULTS_DIR) -> str:
    """The table for every run `overrides` compose to, with the paper's main run beside them.
    Runs with the same figures (seeds of one arm, arms of one shape) share a column."""
    from harness.config import compose_runs

    composed = compose_runs(overrides)
    train = [run for run in composed if run.config.job == "train"]
    skipped = [f"{' '.join(run.overrides)}: job={run.config.job}; estimates cover training runs (job=train)"
               for run in composed if run.config.job != "train"]
    names = [run.config.experiment for run in train]
    names = [f"{n}#{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    columns: dict[tuple, list] = {}
    for name, run in zip(names, train):
        row = estimate_run(run.config, name, results_dir)
        key = (row.params, row.vocab_size, row.tokens_per_step, row.total_tokens, row.devices, row.device,
               row.throughput)
        entry = columns.setdefault(key, [row, [], row.vocab_from])
        entry[1].append((run.config.experiment, " ".join(run.overrides) or "(defaults)"))
    rows = []
    for row, runs, vocab_from in columns.values():
        if len(runs) > 1:
            experiments = dict.fromkeys(e for e, _ in runs)
            title = f"{next(iter(experiments))} (x{len(runs)})" if len(experiments) == 1 else f"{len(runs)} runs"
            row = dataclasses.replace(row, name=title)
        rows.append((row, [o for _, o in runs], vocab_from))
    reference = paper_reference(results_dir)
    lines = [render([*(row for row, *_ in rows), reference]), ""]
    for row, runs, vocab_from in rows:
        if len(runs) == 1:
            lines.append(f"  {row.name}: {runs[0]}; vocabulary from {vocab_from}")
        else:
            lines.append(f"  {row.name}, vocabulary from {vocab_from}:")
            lines += [f"    {o}" for o in runs]
    lines += [f"  skipped {note}" for note in skipped]
    for row, *_ in rows:
        if row.throughput is None:
            lines.append(f"  {row.name}: a CPU profile (launch.gpus_per_node=0): an estimate needs a GPU "
                         f"cluster profile (e.g. cluster=a100_8x8) or a CPU measurement in "
                         f"{Path(results_dir) / 'train_step.json'}")
    sources = dict.fromkeys(row.throughput.label for row in [*(r for r, *_ in rows), reference] if row.throughput)
    lines += [f"  tokens/s per GPU: {label}" for label in sources]
    lines.append(f"  reference: the paper's main run as stated: open_lm-1b, {PAPER_TOKENS / 1e9:.0f}B tokens "
                 f"(~1M-token batches), {PAPER_GPUS} {PAPER_GPU}: wall {_duration(reference.wall_s)}, "
                 f"{_count(reference.gpu_hours)} GPU-hours")
    if any(run.config.freeze for run in train):
        lines.append("  runs with frozen parameters (freeze=...) skip those weights' gradients: their FLOPs, "
                     "wall time and GPU-hours are upper bounds")
    lines.append("  FLOPs per token = 6N + 12 * n_layers * d_model * seq_len, N without the input embedding (model FLOPs; no recompute)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Rendering


def render(rows: list[Estimate]) -> str:
    table = [("", *(row.name for row in rows)),
             ("parameters N", *(f"{row.params:,} ({_short(row.params)})" for row in rows)),
             ("vocabulary", *(f"{row.vocab_size:,}" for row in rows)),
             ("tokens per step", *("-" if row.tokens_per_step is None else f"{row.tokens_per_step:,}"
                                   for row in rows)),
             ("total tokens", *(f"{row.total_tokens:,.0f} ({_short(row.total_tokens)})" for row in rows)),
             ("FLOPs per token", *(f"{row.flops_per_token:.4g}" for row in rows)),
             ("devices", *(f"{row.devices} x {row.device}" for row in rows)),
             ("tokens/s per GPU", *("-" if row.throughput is None else f"{row.throughput.tokens_per_s:,.0f}"
                                    for row in rows)),
             ("MFU", *("-" if row.throughput is None or row.throughput.mfu is None
                       else f"{row.throughput.mfu:.1%}" for row in rows)),
             ("wall time", *(_duration(row.wall_s) for row in rows)),
             ("GPU-hours", *(_count(row.gpu_hours) for row in rows))]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(line, widths))).rstrip() for line in table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 3600:,.0f} h ({seconds / 86400:.1f} d)"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _short(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
