"""One GPU's throughput at paper scale: open_lm-1b training and MoVQGAN encoding.

    python -m bench.gpu                   # one H100/H200 (or A100); about a minute, well under 6
    python -m bench.gpu --cpu --tiny      # the same code path on the CPU, tiny models, seconds (CI)
    PYTHONPATH=<repo> python bench/gpu.py [--output DIR]

Measures, each printed beside its target and written by bench.common.report:
  - training tokens/s of the harness's own OpenLM (open_lm-1b, the image vocabulary, the paper's
    1,088-token blocks and micro-batch 16), bf16 autocast over fp32 master weights, fused AdamW,
    the harness's attention kernel setting (`flash` on CUDA), activation checkpointing off unless
    that does not fit; MFU against the chip's dense bf16 peak and against a measured matmul peak;
    peak memory.
  - images/s of the harness's MoVQGAN encode (ImageTokenizer.encode_tensor: encoder, quant_conv,
    fp32 nearest-code search) at 256x256, random weights (throughput does not depend on them).

It depends on torch and the harness's source only: no DeepSpeed (the GPU machine may lack it), no
YAML parser. The paper's settings are therefore constants here; tests/bench/test_gpu_script.py
checks them against jobs/. diffusers (for the MoVQGAN) is imported only by the encode measurement,
so a machine without it still gets the training figures (the missing one is reported as an error).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python bench/gpu.py`, not `python -m bench.gpu`
    # The script's folder comes first on sys.path, where bench/tokenize.py would shadow the
    # standard library's tokenize (traceback and linecache import it): put the repo root there instead.
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import gc
import resource
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import RESULTS, report
from harness import hardware
from harness.config.schema import ModelConfig
from harness.data.vocab import VocabLayout
from harness.model.open_lm import Architecture, OpenLM
from harness.train.losses import token_losses

# ---- the settings measured (kept equal to jobs/ by tests/bench/test_gpu_script.py) ----

# jobs/model/open_lm_1b.yaml
OPEN_LM_1B = ModelConfig(name="open_lm_1b", d_model=2048, n_layers=24, n_heads=16, ffn_hidden=0,
                         positional="head_rotary")
# jobs/model/micro.yaml: the smallest open_lm-shaped model, for --tiny
MICRO = ModelConfig(name="micro", d_model=32, n_layers=2, n_heads=2, ffn_hidden=64)
# jobs/data/hqitp.yaml: the paper's tokenized data
PAPER_SEQ_LEN = 1088          # <bos> + caption + <boi> + 1,024 image codes + <eoi>
TEXT_VOCAB = 50432            # GPT-NeoX-20B, padded
CODEBOOK = 16384              # SBER-MoVQGAN codes
IMAGE_SIZE = 256
MOVQ_PAPER_VARIANT = "67M"    # tokenizer.image_variant
HQITP_IMAGES = 134_000_000    # HQITP-134M: what one encode pass over the paper's data costs
# jobs/scale/paper.yaml (train.*) and the schema's optimizer defaults (TrainConfig)
PAPER_MICRO_BATCH = 16
PAPER_ATTENTION = "flash"
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 3e-4, (0.9, 0.95), 0.1, 1.0

# --tiny: laptop sizes that run every line above in seconds
TINY_SEQ_LEN, TINY_MICRO_BATCH = 64, 4
TINY_TEXT_VOCAB, TINY_CODEBOOK, TINY_IMAGE_SIZE = 256, 256, 64

NOT_APPLICABLE = "n/a (--cpu --tiny checks the code path; its figures are not the GPU's)"


@dataclass(frozen=True)
class Setup:
    """What one invocation measures, and on what."""

    device: torch.device
    tiny: bool
    model: ModelConfig
    layout: VocabLayout
    seq_len: int
    micro_batch: int
    warmup_steps: int
    timed_steps: int
    matmul_size: int
    movq_variants: tuple[str, ...]
    image_size: int
    encode_batch: int
    encode_batches: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        # bf16 is the paper's precision on the GPU; on the CPU bf16 GEMMs are often emulated, so
        # fp32 is the precision whose peak the CPU's MFU is measured against.
        return torch.bfloat16 if self.cuda else torch.float32


def make_setup(args: argparse.Namespace) -> Setup:
    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu: no CUDA device here; use --cpu --tiny to check the code path")
    if args.tiny:
        layout = VocabLayout(TINY_TEXT_VOCAB, pad=1, bos=0, eos=0, codebook_size=TINY_CODEBOOK)
        model = replace(MICRO, attention="sdpa")  # FlashAttention runs on CUDA only
        setup = Setup(device, True, model, layout, TINY_SEQ_LEN, TINY_MICRO_BATCH, warmup_steps=1,
                      timed_steps=3, matmul_size=512, movq_variants=("tiny",), image_size=TINY_IMAGE_SIZE,
                      encode_batch=2, encode_batches=2)
    else:
        # GPT-NeoX's ids (<|endoftext|> = 0 for bos/eos, <|padding|> = 1); only pad matters here.
        layout = VocabLayout(TEXT_VOCAB, pad=1, bos=0, eos=0, codebook_size=CODEBOOK)
        model = replace(OPEN_LM_1B, attention=PAPER_ATTENTION if device.type == "cuda" else "sdpa")
        setup = Setup(device, False, model, layout, PAPER_SEQ_LEN, PAPER_MICRO_BATCH, warmup_steps=5,
                      timed_steps=20, matmul_size=8192, movq_variants=(MOVQ_PAPER_VARIANT, "270M"),
                      image_size=IMAGE_SIZE, encode_batch=32, encode_batches=4)
    overrides = {k: v for k, v in (("micro_batch", args.micro_batch), ("timed_steps", args.steps),
                                   ("seq_len", args.seq_len)) if v}
    return replace(setup, **overrides)


def sync(device: torch.device) -> None:
    """Kernels run asynchronously: a timer read without this measures the launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- peaks ----

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iterations: int = 20) -> float:
    """FLOP/s of an n x n x n matmul in the training dtype: the rate this chip actually reaches,
    against which an MFU says how much the model leaves on the table (the datasheet's is higher)."""
    generator = torch.Generator(device).manual_seed(0)
    # Random data: zeros let the chip draw less power, clock higher and overstate the peak.
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):  # cuBLAS heuristics, clocks ramping up
        torch.matmul(a, b, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        torch.matmul(a, b, out=out)
    sync(device)
    return 2 * n ** 3 * iterations / (time.perf_counter() - start)


# ---- training ----

def pick_attention(setup: Setup) -> tuple[str, str]:
    """The model's attention setting, and why. `flash` fails loudly where FlashAttention cannot
    run (the harness's choice); a benchmark would rather measure sdpa than measure nothing."""
    wanted = setup.model.attention
    if wanted != "flash":
        return wanted, "as configured"
    head_dim = setup.model.d_model // setup.model.n_heads
    q = torch.randn(1, setup.model.n_heads, 128, head_dim, device=setup.device, dtype=setup.dtype)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as error:
        return "sdpa", f"flash unavailable here ({str(error).splitlines()[0][:120]})"
    return "flash", "FlashAttention-2 through SDPA"


def build_model(setup: Setup, attention: str, checkpointing: bool) -> OpenLM:
    """The harness's OpenLM, built straight on the device (a 1.4B-parameter CPU init is slow)."""
    config = replace(setup.model, attention=attention, activation_checkpointing=checkpointing)
    arch = Architecture.from_config(config, setup.layout.size)
    torch.manual_seed(0)
    with setup.device:
        return OpenLM(arch)


def make_optimizer(model: OpenLM, setup: Setup) -> torch.optim.Optimizer:
    """AdamW over the fp32 master weights; fused on CUDA (one kernel for all tensors), as the
    paper runs DeepSpeed's FusedAdam. One parameter group: decay groups change no cost."""
    options: dict[str, Any] = {"fused": True} if setup.cuda else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, **options)


def flops_per_token(model: OpenLM, context: int) -> tuple[int, float]:
    """(N, model FLOPs per token) as harness.hardware counts them: N without the input embedding."""
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("tok_embeddings"))
    return n, hardware.flops_per_token(n, model.arch.n_layers, model.arch.d_model, context)


def train_step(model: OpenLM, optimizer: torch.optim.Optimizer, block: torch.Tensor, setup: Setup) -> torch.Tensor:
    """One step as the harness's loop takes it: next-token loss over the block's non-pad targets
    (the harness's fp32 token_losses), backward, gradient clipping, AdamW. bf16 autocast on CUDA."""
    inputs, targets = block[:, :-1], block[:, 1:]
    keep = targets != setup.layout.pad
    with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.cuda):
        logits = model(inputs)
    loss = (token_losses(logits, targets) * keep).sum() / keep.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def time_train_steps(step: Callable[[], torch.Tensor], setup: Setup) -> tuple[float, float]:
    """(seconds per step over the timed steps, last loss). Warm-up steps first: the first steps
    allocate the optimizer states and pick kernels, which later steps do not pay again."""
    for _ in range(setup.warmup_steps):
        step()
    sync(setup.device)
    start = time.perf_counter()
    for _ in range(setup.timed_steps):
        loss = step()
    sync(setup.device)
    return (time.perf_counter() - start) / setup.timed_steps, float(loss)


def peak_memory_gib(device: torch.device) -> float:
    """Peak tensor memory on the GPU; on the CPU the process's peak RSS (all it has to offer)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def measure_training(setup: Setup, attention: str, checkpointing: bool) -> dict[str, Any]:
    if setup.cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    model = build_model(setup, attention, checkpointing).train()
    optimizer = make_optimizer(model, setup)
    # One fixed random block: data loading runs in the harness's loader workers, not in the step.
    generator = torch.Generator(setup.device).manual_seed(0)
    block = torch.randint(0, setup.layout.size, (setup.micro_batch, setup.seq_len), device=setup.device,
                          generator=generator)
    step_s, loss = time_train_steps(lambda: train_step(model, optimizer, block, setup), setup)
    context = setup.seq_len - 1  # a block of seq_len tokens trains seq_len - 1 next-token targets
    parameters, flops = flops_per_token(model, context)
    return {"parameters": sum(p.numel() for p in model.parameters()), "matmul_parameters": parameters,
            "flops_per_token": flops, "tokens_per_step": setup.micro_batch * context, "step_s": step_s,
            "loss": loss, "peak_memory_gib": peak_memory_gib(setup.device)}


def measure_training_fitting(setup: Setup, attention: str) -> tuple[dict[str, Any], bool]:
    """Training figures without activation checkpointing if they fit, else with it (memory for
    recompute, as the harness's paper config does): (figures, checkpointing used)."""
    try:
        return measure_training(setup, attention, checkpointing=False), False
    except torch.cuda.OutOfMemoryError:
        pass  # leave the except block first, so the traceback's frames (and tensors) are freed
    gc.collect()
    torch.cuda.empty_cache()
    return measure_training(setup, attention, checkpointing=True), True


# ---- image tokenizer ----

def build_tokenizer(variant: str, device: torch.device):
    from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config, variant_config

    config = tiny_movq_config(TINY_CODEBOOK) if variant == "tiny" else variant_config(variant)
    return ImageTokenizer.random(config, seed=0, device=device)


def encode_throughput(variant: str, setup: Setup) -> float:
    """images/s of ImageTokenizer.encode_tensor on images already on the device (the tokenize
    job's decoding and host copies overlap with it in its loader; the GPU's work is this)."""
    tokenizer = build_tokenizer(variant, setup.device)
    generator = torch.Generator(setup.device).manual_seed(0)
    images = torch.rand(setup.encode_batch, 3, setup.image_size, setup.image_size, device=setup.device,
                        generator=generator) * 2 - 1
    tokenizer.encode_tensor(images)  # warm-up: cuDNN picks its convolution algorithms
    sync(setup.device)
    start = time.perf_counter()
    for _ in range(setup.encode_batches):
        codes = tokenizer.encode_tensor(images)
    sync(setup.device)
    elapsed = time.perf_counter() - start
    assert codes.shape == (setup.encode_batch, (setup.image_size // 8) ** 2)
    del tokenizer, images, codes
    if setup.cuda:
        torch.cuda.empty_cache()
    return setup.encode_batch * setup.encode_batches / elapsed


# ---- main ----

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: a code-path check)")
    parser.add_argument("--tiny", action="store_true", help="tiny model and tokenizer (seconds)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="directory for <name>.json (bench/results)")
    parser.add_argument("--micro-batch", type=int, default=0, help="sequences per step (default: the paper's 16)")
    parser.add_argument("--seq-len", type=int, default=0, help=f"block length (default: {PAPER_SEQ_LEN})")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps (default 20; --tiny 3)")
    return parser.parse_args(argv)


def run_training(setup: Setup, figures: dict[str, Any], targets: dict[str, str]) -> None:
    peak = hardware.spec_peak(figures["device"]) if setup.cuda else None
    attention, why = pick_attention(setup)
    result, checkpointing = measure_training_fitting(setup, attention)
    tokens_per_s = result["tokens_per_step"] / result["step_s"]
    figures.update({
        "model": setup.model.name, "attention": attention, "attention_note": why,
        "activation_checkpointing": checkpointing, "precision": "bf16 autocast, fp32 master" if setup.cuda else "fp32",
        "micro_batch": setup.micro_batch, "seq_len": setup.seq_len, "vocab_size": setup.layout.size,
        "parameters": result["parameters"], "flops_per_token": float(result["flops_per_token"]),
        "train_step_s": result["step_s"], "train_tokens_per_s": tokens_per_s, "train_loss": result["loss"],
        "peak_memory_gib": result["peak_memory_gib"],
    })
    print(f"train: {tokens_per_s:,.0f} tokens/s ({setup.timed_steps} steps of {setup.micro_batch} x "
          f"{setup.seq_len}, {1e3 * result['step_s']:,.1f} ms/step, attention {attention}, "
          f"activation checkpointing {'on' if checkpointing else 'off'})")
    if "matmul_peak_tflops" in figures:  # absent only where its own measurement failed
        measured = figures["matmul_peak_tflops"] * 1e12
        figures["mfu_vs_matmul_peak_pct"] = 100 * tokens_per_s * result["flops_per_token"] / measured
        print(f"MFU: {figures['mfu_vs_matmul_peak_pct']:.3g}% of the measured matmul peak "
              f"({measured / 1e12:,.3g} TFLOP/s)")
    if setup.tiny:
        for key in ("train_tokens_per_s", "mfu_vs_matmul_peak_pct", "peak_memory_gib"):
            targets[key] = NOT_APPLICABLE
        return
    targets["mfu_vs_matmul_peak_pct"] = ">= 50"
    if setup.cuda:
        total = torch.cuda.get_device_properties(setup.device).total_memory / 2 ** 30
        targets["peak_memory_gib"] = (f"< {total:,.0f} (this GPU's memory), activation checkpointing off"
                                     + ("; it did not fit, so it is on" if checkpointing else ""))
    if peak is not None:
        mfu_spec = 100 * tokens_per_s * result["flops_per_token"] / peak
        figures["mfu_vs_spec_peak_pct"] = mfu_spec
        figures["spec_peak_tflops"] = peak / 1e12
        targets["mfu_vs_spec_peak_pct"] = ">= 50"
        targets["train_tokens_per_s"] = f">= {0.5 * peak / result['flops_per_token']:,.0f} (50% MFU of the spec peak)"
        print(f"MFU: {mfu_spec:.1f}% of the dense bf16 spec peak ({peak / 1e12:,.0f} TFLOP/s)")
    # What the paper's run would cost at this rate: 100B tokens (jobs/scale/paper.yaml).
    figures["paper_100B_tokens_gpu_hours"] = 100e9 / tokens_per_s / 3600


def run_encode(setup: Setup, figures: dict[str, Any], targets: dict[str, str]) -> None:
    for variant in setup.movq_variants:
        rate = encode_throughput(variant, setup)
        key = f"encode_images_per_s_{variant}"
        figures[key] = rate
        targets[key] = NOT_APPLICABLE if setup.tiny else "none stated by the paper"
        print(f"encode (MoVQGAN {variant}, random weights): {rate:,.1f} images/s at "
              f"{setup.image_size}x{setup.image_size}, batch {setup.encode_batch}")
        if variant == MOVQ_PAPER_VARIANT:
            figures["hqitp_134M_encode_gpu_hours"] = HQITP_IMAGES / rate / 3600


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = make_setup(args)
    name = "gpu" + ("_tiny" if setup.tiny else "") + ("_cpu" if not setup.cuda else "")
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(setup.device) if setup.cuda else "cpu"}
    targets: dict[str, str] = {}
    failed = False
    # Each measurement on its own: one that fails (no diffusers, say) still leaves the others' figures.
    sections: list[tuple[str, Callable[[], None]]] = [
        ("matmul", lambda: figures.update(
            matmul_peak_tflops=matmul_peak(setup.device, setup.dtype, setup.matmul_size,
                                           iterations=50 if setup.cuda else 20) / 1e12)),
        ("train", lambda: run_training(setup, figures, targets)),
        ("encode", lambda: run_encode(setup, figures, targets)),
    ]
    for section, measure in sections:
        started = time.perf_counter()
        try:
            measure()
        except Exception as error:  # recorded and reported; the exit status says it failed
            traceback.print_exc()
            figures[f"error_{section}"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            failed = True
        print(f"({section}: {time.perf_counter() - started:,.1f} s)", flush=True)
        gc.collect()
        if setup.cuda:
            torch.cuda.empty_cache()
    report(name, figures, targets, directory=args.output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
