"""Image-tokenizer encode throughput, and what it means for tokenizing HQITP-134M.

    python -m bench.tokenize            # the real run (67M at 256x256, batch 4, 3 timed batches)
    python -m bench.tokenize --quick    # a check that it runs (batch 1, 1 timed batch)

Measures `ImageTokenizer.encode` (the harness's own code: encoder -> quant_conv -> nearest code in
exact fp32) with seeded random weights, which cost exactly what the released weights cost:
  * the SBER-MoVQGAN 67M architecture (the one data=hqitp uses) at 256x256, on this machine's CPU;
  * the tiny smoke variant (data=smoke: codebook 1,024) at 64x64, on this machine's CPU.
Each after one warm-up batch; the warm-up of the 67M model is also run under torch's FLOP counter,
giving the encoder's FLOPs per image (convolutions, matmuls, attention; multiply-add = 2).

Then the wall time to tokenize 134M images on N GPUs, from a per-GPU images/s:
  * measured: the first figure in bench/results/gpu.json whose key contains "encode" and
    "images_per_s" (a 67M figure preferred), when that file exists;
  * else NOMINAL: FLOPs per image (counted here) against an ASSUMED A100 fp32 rate (19.5 TFLOP/s
    peak, non-tensor-core, because encode runs with TF32 off) at an ASSUMED utilisation (50%).
The projection is encode only, with perfect scaling over GPUs: no JPEG decoding, resizing,
reading or writing shards, and no stragglers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS, report
from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config, variant_config

NAME = "tokenize"
HQITP_IMAGES = 134_000_000  # HQITP-134M
SMOKE_CODEBOOK = 1024       # jobs/data/smoke.yaml
A100_FP32_TFLOPS = 19.5     # A100 SXM peak fp32 without tensor cores (TF32 is off while encoding)


def images(batch: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def encode_rate(tokenizer: ImageTokenizer, size: int, batch: int, batches: int,
                count_flops: bool = False) -> dict[str, Any]:
    """Images/s over `batches` timed batches after one warm-up batch (optionally FLOP-counted)."""
    warm = images(batch, size, seed=0)
    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            tokenizer.encode(warm)
        flops = counter.get_total_flops() / batch
    else:
        tokenizer.encode(warm)
    timed = [images(batch, size, seed=1 + i) for i in range(batches)]
    start = time.perf_counter()
    for pixels in timed:
        ids = tokenizer.encode(pixels)
    elapsed = time.perf_counter() - start
    assert ids.shape == (batch, tokenizer.tokens_per_image(size))  # a shape check, not a timing
    return {"images_per_s": batch * batches / elapsed, "seconds": elapsed, "flops_per_image": flops}


def measured_gpu_rate(path: Path) -> tuple[float, str] | None:
    """(images/s, description) from bench/gpu.py's results file, if it has an encode figure
    (`encode_images_per_s_<variant>`; the 67M one preferred)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    figures = payload.get("figures", {}) if isinstance(payload, dict) else {}
    found = [(key, float(value)) for key, value in figures.items()
             if "encode" in key and "images_per_s" in key and isinstance(value, (int, float)) and value > 0]
    if not found:
        return None
    key, value = sorted(found, key=lambda kv: "67m" not in kv[0].lower())[0]
    gpu = (payload.get("machine") or {}).get("gpu", "GPU named in the file")
    return value, f"measured: {path.name} '{key}' on {gpu}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="67M", choices=["67M", "102M", "270M"],
                        help="SBER-MoVQGAN architecture timed at --size (data=hqitp uses 67M)")
    parser.add_argument("--size", type=int, default=256, help="image side for the MoVQGAN variant")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (MoVQGAN variant)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches after one warm-up (MoVQGAN)")
    parser.add_argument("--tiny-batch", type=int, default=16, help="images per batch (tiny smoke variant, 64x64)")
    parser.add_argument("--tiny-batches", type=int, default=5, help="timed batches after one warm-up (tiny)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64], help="GPU counts to project for")
    parser.add_argument("--images", type=int, default=HQITP_IMAGES, help="images to tokenize (HQITP-134M)")
    parser.add_argument("--gpu-results", type=Path, default=RESULTS / "gpu.json",
                        help="a GPU benchmark's results, read for a measured per-GPU encode images/s")
    parser.add_argument("--gpu-tflops", type=float, default=A100_FP32_TFLOPS,
                        help="ASSUMED per-GPU fp32 peak for the nominal figure (A100: 19.5)")
    parser.add_argument("--gpu-utilisation", type=float, default=0.5,
                        help="ASSUMED fraction of that peak the encoder reaches (nominal figure)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="batch 1, one timed batch: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.batches, args.tiny_batch, args.tiny_batches = 1, 1, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    figures: dict[str, Any] = {"mode": "quick" if args.quick else "full"}
    big = ImageTokenizer.random(variant_config(args.variant), seed=0, device="cpu")
    label = f"{args.variant}_{args.size}px"
    rate = encode_rate(big, args.size, args.batch, args.batches, count_flops=True)
    figures[f"encode_{label}_cpu_images_per_s"] = rate["images_per_s"]
    figures[f"encode_{label}_cpu_batch"] = args.batch
    figures[f"encode_{label}_cpu_images_timed"] = args.batch * args.batches
    flops = rate["flops_per_image"]
    figures[f"encode_{label}_gflop_per_image"] = flops / 1e9 if flops else None
    if flops:
        figures[f"encode_{label}_cpu_achieved_gflop_per_s"] = flops * rate["images_per_s"] / 1e9
    figures[f"encode_{label}_parameters"] = sum(p.numel() for p in big.model.parameters())
    del big

    tiny = ImageTokenizer.random(tiny_movq_config(SMOKE_CODEBOOK), seed=0, device="cpu")
    tiny_rate = encode_rate(tiny, 64, args.tiny_batch, args.tiny_batches)
    figures["encode_tiny_64px_cpu_images_per_s"] = tiny_rate["images_per_s"]
    figures["encode_tiny_64px_cpu_batch"] = args.tiny_batch
    del tiny

    measured = measured_gpu_rate(args.gpu_results)
    if measured is not None:
        per_gpu, source = measured
    elif flops:
        per_gpu = args.gpu_tflops * 1e12 * args.gpu_utilisation / flops
        source = (f"NOMINAL, not measured: {flops / 1e9:.0f} GFLOP/image (counted here) at an ASSUMED "
                  f"{args.gpu_tflops:g} TFLOP/s fp32 peak x ASSUMED {args.gpu_utilisation:.0%} utilisation "
                  f"(A100, TF32 off as encode runs); no {args.gpu_results} with an encode figure")
    else:  # no FLOP count: fall back to the CPU figure times an assumed speed ratio
        ratio = 100.0
        per_gpu = rate["images_per_s"] * ratio
        source = (f"NOMINAL, not measured: this CPU's {rate['images_per_s']:.3g} images/s x an ASSUMED "
                  f"GPU/CPU speed ratio of {ratio:g}")
    figures["gpu_images_per_s"] = per_gpu
    figures["gpu_images_per_s_source"] = source
    figures["projected_images"] = args.images
    for n in args.gpus:
        figures[f"projected_hours_{n}_gpus"] = args.images / (per_gpu * n) / 3600
    figures["projection_covers"] = ("encode only, perfect scaling over GPUs; excludes image decoding, "
                                    "resizing, shard reading/writing and stragglers")
    report(NAME + ("_quick" if args.quick else ""), figures, targets={})  # never over a real result


if __name__ == "__main__":
    main()
