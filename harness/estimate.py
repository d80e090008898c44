"""`harness estimate`: what a run costs before it is submitted (parameters, tokens, FLOPs, time).

For each composed run: the parameter count N, exact, from the architecture built on torch's meta
device (nothing is allocated); tokens per step (micro_batch x grad_accum x world x seq_len) and in
total (x train.steps); model FLOPs per token, 6N + 12 * n_layers * d_model * seq_len (forward and
backward, attention included); hardware FLOPs per token, the same plus, with
model.activation_checkpointing on, the forward the checkpointed blocks run again in the backward
(2 per block weight + 4 * n_layers * d_model * seq_len; the output layer is not checkpointed);
the data-parallel communication per optimizer step; and from these the step time, wall time and
GPU-hours.

Utilisation: the throughput assumption (measured or nominal) is a utilisation of hardware FLOPs
(HFU), because the GPU executes the recompute too: tokens/s per GPU while computing = HFU x peak /
hardware FLOPs per token, and MFU = HFU x model / hardware FLOPs per token. It comes, in order, from
  - bench/results/gpu.json (a GPU benchmark, written by bench.common.report): its tokens/s and the
    FLOPs per token of the model it ran (with the recompute if its "activation_checkpointing" figure
    says it ran with it) give its HFU on its GPU; that HFU, times the peak of the cluster's GPU,
    over the run's hardware FLOPs per token, is the run's tokens/s per GPU ("measured");
  - otherwise a nominal figure: the GPU's dense bf16 peak x an assumed HFU of 40%.
CPU profiles (launch.gpus_per_node = 0) are estimated only from bench/results/train_step.json, the
same way, scaled by hardware FLOPs per token.

Communication (GPU profiles): ZeRO stages 0-2 send, per optimizer step, the gradients once
(reduce-scatter; all-reduce at stage 0) and the parameters once (all-gather), both in the training
precision (bf16: 2 bytes per parameter); a ring collective over W ranks sends (W-1)/W of its buffer
from each GPU, so 2 x bytes x N x (W-1)/W per GPU in all (stage 3: one more all-gather, two with
recompute). Across nodes the collectives run at NCCL's bus bandwidth, which its multi-channel rings
hold near the node's total inter-node bandwidth (hardware.INTERCONNECTS, named per cluster in
CLUSTER_INTERCONNECT: a ring's node-boundary hop carries what every other hop does, one such hop per
channel per NIC); within one node, at the GPU's NVLink bandwidth. The step time adds compute and communication with no overlap (the
pessimistic bound, which wall time and GPU-hours use); the fully overlapped bound max(compute,
communication) is printed beside it, with the term that dominates.

Anchor: a published throughput for a ~1B model (hardware.ANCHOR_1B) is printed beside each GPU
estimate, as the ratio of the estimate's MFU over the whole step to the anchor's MFU, i.e. of its
tokens/s per GPU to the anchor's carried to the run's GPU (by dense bf16 peaks) and model (by model
FLOPs per token).

A benchmark file is {"machine": {"gpu": ...}, "figures": {...}} (bench.common.report). From its
figures: the tokens/s ("tokens_per_s", "train_tokens_per_s" (bench/gpu.py), "harness_positions_per_s"
(bench/train_step.py: positions, padding included, as the run's token budget counts them), else
"harness_tokens_per_s" (non-pad targets), "tokens_per_s_per_gpu", else the largest figure whose
key contains "tokens_per_s"); the device ("device"/"gpu" figure, else machine.gpu); and what it ran, so that its
FLOPs per token are counted by the same formula as the run's: "parameters" with "n_layers" and
"d_model" or a jobs/model name in "model" (and "seq_len"; else the run's), else its
"flops_per_token" or "mfu" figure as given (its recompute then taken in the run's model's
proportion). Without any of these the benchmark is taken to have run the estimated run's own model,
and the label says so.

The paper's main run is always shown beside: open_lm-1b, 100B tokens, 64 A100, under the same
throughput and communication assumptions.
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
ASSUMED_HFU = 0.40
# Cluster profile (launch.cluster) -> GPU type. Other GPU clusters are taken to be A100.
CLUSTER_GPU = {"a100_8x8": "A100"}
DEFAULT_GPU = "A100"
# Cluster profile -> its interconnect, a key of hardware.INTERCONNECTS. Other GPU clusters are
# taken to have the default, and the output says so.
CLUSTER_INTERCONNECT = {"a100_8x8": "4x HDR IB per node, NVLink 3"}
DEFAULT_INTERCONNECT = "4x HDR IB per node, NVLink 3"
# The paper's main run, as stated: open_lm-1b, 100B tokens, 64 A100 (~1M-token batches).
PAPER_TOKENS = 100e9
PAPER_GPUS = 64
PAPER_GPU = "A100"
PAPER_OVERRIDES = ["experiment=random_init", "cluster=a100_8x8"]


@dataclass(frozen=True)
class Flops:
    """FLOPs per token of one model: the model's, and the forward its checkpointed blocks repeat."""
    model: float
    recompute: float             # the extra when activation checkpointing is on
    checkpointing: bool
    vocab: int
    seq: int

    @property
    def hardware(self) -> float:
        return self.model + (self.recompute if self.checkpointing else 0.0)

    @property
    def with_recompute(self) -> float:
        """hardware / model FLOPs had it checkpointed: carries a benchmark's recompute to this model."""
        return (self.model + self.recompute) / self.model


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float          # per device while computing (GPU; per task on CPU)
    hfu: float | None            # hardware FLOPs / peak while computing; None on CPU
    mfu: float | None            # model FLOPs / peak while computing; None on CPU
    label: str


@dataclass(frozen=True)
class Comm:
    """Data-parallel traffic of one optimizer step, per GPU."""
    bytes_per_gpu: float
    seconds: float
    collectives: str             # what is sent
    link: str                    # the link that bounds it, and its rate


@dataclass(frozen=True)
class Estimate:
    name: str
    params: int
    vocab_size: int
    flops_per_token: float           # model FLOPs
    hardware_flops_per_token: float  # model FLOPs + the recomputed forward, if checkpointing
    tokens_per_step: int
    total_tokens: float
    devices: int                 # GPUs (CPU: tasks)
    device: str                  # "A100", "H200", "CPU"
    throughput: Throughput | None
    comm: Comm | None            # None on CPU profiles
    vocab_from: str = ""         # the dataset manifest or the data config
    step_stated: bool = True     # False: tokens per step not shown (the paper states "~1M")

    @property
    def compute_s(self) -> float | None:
        """Seconds of computing per optimizer step."""
        if self.throughput is None:
            return None
        return self.tokens_per_step / (self.throughput.tokens_per_s * self.devices)

    @property
    def comm_s(self) -> float:
        return 0.0 if self.comm is None else self.comm.seconds

    @property
    def step_s(self) -> float | None:
        """Compute, then communication, no overlap: the pessimistic bound, which wall time uses."""
        return None if self.compute_s is None else self.compute_s + self.comm_s

    @property
    def overlapped_step_s(self) -> float | None:
        """Communication hidden entirely behind compute or vice versa: the optimistic bound."""
        return None if self.compute_s is None else max(self.compute_s, self.comm_s)

    @property
    def tokens_per_s(self) -> float | None:
        """Per device over the whole (pessimistic) step, communication included."""
        return None if self.step_s is None else self.tokens_per_step / (self.step_s * self.devices)

    def over_step(self, utilisation: float | None) -> float | None:
        """A utilisation while computing, averaged over the whole (pessimistic) step."""
        if utilisation is None or self.step_s is None:
            return None
        return utilisation * self.compute_s / self.step_s

    @property
    def wall_s(self) -> float | None:
        return None if self.step_s is None else self.total_tokens / self.tokens_per_step * self.step_s

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


def recompute_flops(params: int, vocab: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """The forward activation checkpointing repeats, per token: every block's (harness.model.open_lm
    checkpoints blocks), i.e. all parameters but the input embedding and the output layer."""
    return hardware.recompute_flops_per_token(params - 2 * vocab * d_model, n_layers, d_model, seq_len)


def model_flops(params: int, vocab: int, n_layers: int, d_model: int, seq_len: int, checkpointing: bool) -> Flops:
    return Flops(flops_per_token(params, vocab, n_layers, d_model, seq_len),
                 recompute_flops(params, vocab, n_layers, d_model, seq_len), checkpointing, vocab, seq_len)


def gpu_of(config: RunConfig) -> str | None:
    """The cluster's GPU type; None for CPU profiles."""
    if config.launch.gpus_per_node <= 0:
        return None
    return CLUSTER_GPU.get(config.launch.cluster, DEFAULT_GPU)


# ---------------------------------------------------------------------------------------------
# Communication


def zero_passes(stage: int, checkpointing: bool) -> int:
    """Ring passes over the parameters' size per optimizer step: stages 0-2 reduce the gradients
    (reduce-scatter, or all-reduce = reduce-scatter + all-gather at stage 0) and gather the updated
    parameters once; stage 3 gathers parameters in the forward and the backward (and again in the
    recomputed forward)."""
    return 2 if stage < 3 else 3 + int(checkpointing)


def zero_bytes_per_gpu(params: int, world: int, value_bytes: int, passes: int) -> float:
    """Bytes each GPU sends per step: a ring collective over `world` ranks sends (W-1)/W of its
    buffer from each."""
    return passes * value_bytes * params * (world - 1) / world


def _link(config: RunConfig) -> tuple[float, str]:
    """The bandwidth per GPU that bounds the step's collectives, and its description."""
    named = CLUSTER_INTERCONNECT.get(config.launch.cluster)
    name = named or DEFAULT_INTERCONNECT
    net, assumed = hardware.INTERCONNECTS[name], "" if named else f" (assumed: {config.launch.cluster} names none)"
    launch = config.launch
    if launch.nodes > 1:
        # NCCL's bus bandwidth across nodes: near the node's total over its NICs (measured busbw
        # of multi-node A100 all-reduces sits at 90-95% of it); the per-GPU bytes above are bus bytes.
        rate = net.inter_node_per_node
        return rate, (f"across {launch.nodes} nodes over {name}{assumed}: bus bandwidth = the node's "
                      f"{rate / 1e9:.0f} GB/s over its NICs")
    return net.intra_node_per_gpu, f"within one node over {name}{assumed}: {net.intra_node_per_gpu / 1e9:.0f} GB/s per GPU"


def zero_comm(config: RunConfig, params: int) -> Comm:
    stage, world = config.train.zero_stage, config.world_size
    value_bytes = 2 if config.train.precision == "bf16" else 4
    dtype = config.train.precision
    sent = zero_bytes_per_gpu(params, world, value_bytes, zero_passes(stage, config.model.activation_checkpointing))
    what = (f"ZeRO-{stage}: " + (f"all-reduce of {dtype} gradients" if stage == 0 else
                                 f"reduce-scatter of {dtype} gradients + all-gather of {dtype} parameters"
                                 + (" (forward and backward)" if stage == 3 else ""))
            + f" over {world} ranks")
    rate, link = _link(config)
    return Comm(sent, sent / rate, what, link)


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


def _bench_flops(bench: dict, run: Flops) -> tuple[float | None, float, str]:
    """FLOPs per token of the model the benchmark ran, by this module's formula where its figures
    allow (so that its MFU and the run's are counted alike); its hardware / model FLOPs (above 1 if
    it ran with activation checkpointing); and how that was known."""
    figures = bench["figures"]
    checkpointed = figures.get("activation_checkpointing") is True
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
            params = count_parameters(model, int(_number(figures.get("vocab_size")) or run.vocab))
    # Without the benchmark's shape its recompute is taken in the run's model's proportion.
    ratio = run.with_recompute if checkpointed else 1.0
    if params and layers and width:
        seq = _number(figures.get("seq_len"))
        shape = f"{int(params):,} parameters, {int(layers)} layers x d_model {int(width)}"
        if seq is None:
            seq, shape = run.seq, shape + f", this run's seq_len {run.seq}"
        vocab = int(_number(figures.get("vocab_size")) or run.vocab)
        flops = model_flops(int(params), vocab, int(layers), int(width), int(seq), checkpointed)
        return flops.model, flops.hardware / flops.model, shape + (", recompute" if checkpointed else "")
    recompute = ", recompute" if checkpointed else ""
    if _number(figures.get("flops_per_token")):
        return _number(figures["flops_per_token"]), ratio, f"its flops_per_token figure{recompute}"
    if _number(figures.get("mfu")):
        return None, ratio, f"its mfu{recompute}"
    return run.model, ratio, f"taken to be this run's model{recompute}"


def gpu_throughput(run: Flops, gpu: str, results_dir: Path) -> Throughput:
    """Tokens/s per GPU of type `gpu` while computing, for a model of `run`'s FLOPs per token."""
    peak = hardware.spec_peak(gpu)
    share = run.model / run.hardware  # MFU / HFU
    try:
        bench, unusable = read_bench(results_dir, "gpu"), ""
    except HarnessError as exc:  # e.g. its training section failed: no rate to use
        bench, unusable = None, f" (benchmark file not used: {exc})"
    if bench is None:
        return Throughput(ASSUMED_HFU * peak / run.hardware, ASSUMED_HFU, ASSUMED_HFU * share,
                          f"nominal (assumed HFU {ASSUMED_HFU:.0%}): {gpu} dense bf16 peak "
                          f"{peak / 1e12:.0f} TFLOP/s x {ASSUMED_HFU:.0%} / hardware FLOPs per token{unusable}")
    device = _bench_device(bench)
    bench_peak = hardware.spec_peak(device)
    bench_fpt, ratio, how = _bench_flops(bench, run)
    where = f"{bench['path']}: {bench['key']} = {bench['tokens_per_s']:,.0f} on {device}"
    if how.startswith("its mfu"):
        mfu = _number(bench["figures"]["mfu"])
        mfu = mfu / 100 if mfu > 1 else mfu
    elif bench_peak is not None:
        mfu = bench["tokens_per_s"] * bench_fpt / bench_peak
    else:
        # Its GPU's peak is unknown: scale by hardware FLOPs per token only, not across GPU types.
        rate = bench["tokens_per_s"] * bench_fpt * ratio / run.hardware
        hfu = rate * run.hardware / peak
        return Throughput(rate, hfu, hfu * share,
                          f"measured ({where}; model: {how}), scaled by hardware FLOPs per token; "
                          f"{device}'s peak is unknown, so not carried to {gpu}")
    hfu = mfu * ratio
    same = bench_peak is not None and gpu.lower() in device.lower()
    carried = "" if same else f", carried to {gpu} at the same HFU"
    return Throughput(hfu * peak / run.hardware, hfu, hfu * share,
                      f"measured ({where}; model: {how}; its MFU {mfu:.1%}, HFU {hfu:.1%}{carried})")


def cpu_throughput(run: Flops, results_dir: Path) -> Throughput | None:
    try:
        bench = read_bench(results_dir, "train_step")
    except HarnessError:
        return None
    if bench is None:
        return None
    bench_fpt, ratio, how = _bench_flops(bench, run)
    if bench_fpt is None:
        bench_fpt, how = run.model, "taken to be this run's model"
    rate = bench["tokens_per_s"] * bench_fpt * ratio / run.hardware
    return Throughput(rate, None, None, f"measured on CPU ({bench['path']}: {bench['key']} = "
                                        f"{bench['tokens_per_s']:,.0f}; model: {how}), scaled by hardware "
                                        f"FLOPs per token; per task, as one process measured it")


# ---------------------------------------------------------------------------------------------
# Estimates


def estimate_run(config: RunConfig, name: str, results_dir: Path = RESULTS_DIR) -> Estimate:
    vocab, vocab_from = vocab_size(config)
    params = count_parameters(config.model, vocab)
    m = config.model
    flops = model_flops(params, vocab, m.n_layers, m.d_model, config.data.seq_len, m.activation_checkpointing)
    tokens_per_step = config.train.micro_batch * config.train.grad_accum * config.world_size * config.data.seq_len
    total = config.train.steps * tokens_per_step
    gpu = gpu_of(config)
    if gpu is None:
        return Estimate(name, params, vocab, flops.model, flops.hardware, tokens_per_step, total,
                        config.world_size, "CPU", cpu_throughput(flops, results_dir), None, vocab_from)
    gpus = config.launch.nodes * config.launch.gpus_per_node
    # One task per GPU: GPUs without a task do not train.
    devices = min(gpus, config.world_size)
    return Estimate(name, params, vocab, flops.model, flops.hardware, tokens_per_step, total, devices, gpu,
                    gpu_throughput(flops, gpu, results_dir), zero_comm(config, params), vocab_from)


def paper_reference(results_dir: Path = RESULTS_DIR) -> Estimate:
    """The paper's main run as stated (open_lm-1b, 100B tokens, 64 A100), its model as this
    harness builds it at paper scale, under the same throughput and communication assumptions."""
    from harness.config import compose_runs

    run = estimate_run(compose_runs(PAPER_OVERRIDES)[0].config, "paper (reference)", results_dir)
    return dataclasses.replace(run, step_stated=False, total_tokens=PAPER_TOKENS, devices=PAPER_GPUS,
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
        key = (row.params, row.vocab_size, row.hardware_flops_per_token, row.tokens_per_step, row.total_tokens,
               row.devices, row.device, row.throughput, row.comm)
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
        lines += _cost_lines(row)
    sources = dict.fromkeys(row.throughput.label for row in [*(r for r, *_ in rows), reference] if row.throughput)
    lines += [f"  tokens/s per GPU while computing: {label}" for label in sources]
    lines.append(f"  reference: the paper's main run as stated: open_lm-1b, {PAPER_TOKENS / 1e9:.0f}B tokens "
                 f"(~1M-token batches), {PAPER_GPUS} {PAPER_GPU}: wall {_duration(reference.wall_s)}, "
                 f"{_count(reference.gpu_hours)} GPU-hours")
    if any(run.config.freeze for run in train):
        lines.append("  runs with frozen parameters (freeze=...) skip those weights' gradients: their FLOPs, "
                     "wall time and GPU-hours are upper bounds")
    lines.append("  model FLOPs per token = 6N + 12 * n_layers * d_model * seq_len, N without the input embedding; "
                 "hardware FLOPs add, with activation checkpointing, the blocks' forward again: "
                 "2 * N_blocks + 4 * n_layers * d_model * seq_len")
    return "\n".join(lines)


def _cost_lines(row: Estimate) -> list[str]:
    """The recompute, communication, step-time and anchor lines of one column."""
    lines = []
    if row.hardware_flops_per_token > row.flops_per_token:
        lines.append(f"  recompute ({row.name}): activation checkpointing on: hardware FLOPs/token = model "
                     f"{row.flops_per_token:.4g} + recomputed forward "
                     f"{row.hardware_flops_per_token - row.flops_per_token:.4g} = {row.hardware_flops_per_token:.4g}; "
                     f"the utilisation assumed or measured is HFU, so MFU = HFU x "
                     f"{row.flops_per_token / row.hardware_flops_per_token:.3f}")
    if row.comm is None or row.throughput is None:
        return lines
    lines.append(f"  communication ({row.name}): {row.comm.collectives}: {row.comm.bytes_per_gpu:,.0f} bytes "
                 f"({row.comm.bytes_per_gpu / 1e9:.3g} GB) per GPU per step, {row.comm.link}: "
                 f"{row.comm.seconds:.3f} s per step")
    compute, comm, step = row.compute_s, row.comm_s, row.step_s
    dominant = "compute" if compute >= comm else "communication"
    lines.append(f"  step time ({row.name}): compute {compute:.3f} s ({compute / step:.1%}) + communication "
                 f"{comm:.3f} s ({comm / step:.1%}) = {step:.3f} s with no overlap (pessimistic bound: wall "
                 f"time and GPU-hours use it); fully overlapped (optimistic bound): {row.overlapped_step_s:.3f} s; "
                 f"{dominant} dominates")
    return lines + _anchor_lines(row)


def _anchor_lines(row: Estimate) -> list[str]:
    anchor, peak = hardware.ANCHOR_1B, hardware.spec_peak(row.device)
    anchor_peak = hardware.spec_peak(anchor.gpu)
    if peak is None or row.throughput.mfu is None:
        return []
    # The anchor's own model FLOPs per token, implied by its MFU; carried to this GPU and model.
    anchor_fpt = anchor.mfu * anchor_peak / anchor.tokens_per_s
    carried = anchor.tokens_per_s * (peak / anchor_peak) * (anchor_fpt / row.flops_per_token)
    mfu = row.over_step(row.throughput.mfu)
    return [f"  anchor ({row.name}): ~{anchor.tokens_per_s:,.0f} tokens/s per {anchor.gpu} for a {anchor.model}, ~{anchor.mfu:.0%} "
            f"MFU ({anchor.source}); on {row.device} (x {peak / 1e12:.0f}/{anchor_peak / 1e12:.0f} TFLOP/s) "
            f"with this model (x {anchor_fpt:.3g}/{row.flops_per_token:.4g} model FLOPs/token): {carried:,.0f} "
            f"tokens/s per GPU",
            f"  vs anchor ({row.name}): {row.tokens_per_s:,.0f} tokens/s per GPU over the step, MFU {mfu:.1%}: "
            f"{mfu / anchor.mfu:.2f}x the anchor"]


# ---------------------------------------------------------------------------------------------
# Rendering


def render(rows: list[Estimate]) -> str:
    table = [("", *(row.name for row in rows)),
             ("parameters N", *(f"{row.params:,} ({_short(row.params)})" for row in rows)),
             ("vocabulary", *(f"{row.vocab_size:,}" for row in rows)),
             ("tokens per step", *(f"{row.tokens_per_step:,}" if row.step_stated else "-" for row in rows)),
             ("total tokens", *(f"{row.total_tokens:,.0f} ({_short(row.total_tokens)})" for row in rows)),
             ("model FLOPs/token", *(f"{row.flops_per_token:.4g}" for row in rows)),
             ("hardware FLOPs/token", *(_hardware_flops(row) for row in rows)),
             ("devices", *(f"{row.devices} x {row.device}" for row in rows)),
             ("tokens/s per GPU, computing", *("-" if row.throughput is None
                                               else f"{row.throughput.tokens_per_s:,.0f}" for row in rows)),
             ("MFU / HFU, computing", *(_utilisation(row, over_step=False) for row in rows)),
             ("communication per step", *("-" if row.comm is None else f"{row.comm.bytes_per_gpu / 1e9:.3g} GB/GPU, "
                                          f"{row.comm.seconds:.3f} s" for row in rows)),
             ("step time, no overlap", *(_seconds(row.step_s) for row in rows)),
             ("step time, overlapped", *(_seconds(row.overlapped_step_s) for row in rows)),
             ("tokens/s per GPU", *("-" if row.tokens_per_s is None else f"{row.tokens_per_s:,.0f}" for row in rows)),
             ("MFU / HFU", *(_utilisation(row, over_step=True) for row in rows)),
             ("wall time", *(_duration(row.wall_s) for row in rows)),
             ("GPU-hours", *(_count(row.gpu_hours) for row in rows))]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(line, widths))).rstrip() for line in table)


def _hardware_flops(row: Estimate) -> str:
    extra = " (recompute)" if row.hardware_flops_per_token > row.flops_per_token else ""
    return f"{row.hardware_flops_per_token:.4g}{extra}"


def _utilisation(row: Estimate, over_step: bool) -> str:
    """MFU / HFU while computing, or averaged over the whole (pessimistic) step."""
    t = row.throughput
    if t is None or t.mfu is None:
        return "-"
    mfu, hfu = (row.over_step(t.mfu), row.over_step(t.hfu)) if over_step else (t.mfu, t.hfu)
    return f"{mfu:.1%} / {hfu:.1%}"


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.3f} s"


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
