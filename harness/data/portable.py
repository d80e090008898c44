"""Image codes with the same bytes on any CPU, for the image tokenizers the harness builds itself.

data.dvc versions the smoke and micro datasets, and a fresh clone rebuilds them instead of pulling,
so every image must get the same codes on every x86 machine, whatever its vector ISA or thread
count. Float32 does not give that: ATen's and oneDNN's kernels sum in an order that depends on the
ISA (latents move by ~6e-5 between AVX2 and the scalar path, and codes near a tie flip), and even
PyTorch's random fills differ in the last bit between the AVX2 and the scalar `uniform_`. So:

- weights are drawn from numpy's PCG64 (its doubles are integer bits times 2^-53, exact anywhere)
  and rounded once to float32;
- the encoder runs in float64, whose ISA-dependent error (1.1e-13 measured between ATen's AVX2 and
  scalar paths) is nine orders of magnitude below the grid;
- latents are rounded to multiples of 2^-GRID_BITS and held as integers. A latent that another CPU
  computes differently rounds differently only if it lies within that error of a rounding boundary
  (a chance of about 1e-9 per value); the encoder counts latents within NEAR of one, and a build
  with none has the same codes on any CPU whose error stays below NEAR;
- distances to a codebook on the same grid are computed exactly: every partial sum is an integer
  below 2^53, so any summation order (any BLAS kernel) gives the same value; ties go to the lowest
  index;
- the k-means fit of the codebook works on those integers: exact sums, an integer-rounded mean,
  k-means++ draws from an integer cumulative sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError

GRID_BITS = 12
SCALE = float(2 ** GRID_BITS)
LIMIT = 2 ** 20          # |latent| < 256: squared distances stay far below 2^53 for d <= 64
MAX_DIM = 64
CHUNK = 4096             # points per exact distance block
NEAR = 1e-12             # 10x the largest cross-ISA difference measured in the float64 encoder (1.1e-13)
DESCRIPTION = (f"float64 encoder, latents rounded to multiples of 2^-{GRID_BITS}, exact integer "
               "distances (ties to the lowest id): the same codes on any CPU")


def init_weights(model: nn.Module, seed: int) -> None:
    """PyTorch's default bounds (uniform +-1/sqrt(fan_in) for convolutions and linear layers,
    +-1/n for a VQ embedding of n rows), drawn from PCG64 instead of torch's vectorised fills.
    Norm layers keep their constant initialisation."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, module in sorted(model.named_modules(), key=lambda item: item[0]):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(module.weight[0].numel())
                tensors = [module.weight] + ([module.bias] if module.bias is not None else [])
            elif isinstance(module, nn.Embedding):
                bound, tensors = 1.0 / module.num_embeddings, [module.weight]
            else:
                continue
            for tensor in tensors:
                values = (rng.random(tensor.numel()) * 2.0 - 1.0) * bound
                tensor.copy_(torch.from_numpy(values.astype(np.float32)).view_as(tensor))


def to_grid(values: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """float -> int64 multiples of 2^-GRID_BITS (half to even), refusing values too large for the
    exact distance arithmetic."""
    array = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    grid = np.rint(array * SCALE)
    if not np.isfinite(grid).all() or (grid.size and np.abs(grid).max() >= LIMIT):
        raise HarnessError(f"image tokenizer: {what} outside +-{LIMIT / SCALE:g} (or not finite); the "
                           "portable encoding cannot represent it exactly")
    return grid.astype(np.int64)


def near_boundaries(values: torch.Tensor) -> int:
    """How many values lie within NEAR of a rounding boundary (a half-grid step): the only ones
    another CPU's last-bit differences could round the other way."""
    scaled = values.detach().cpu().double().numpy() * SCALE
    return int((np.abs(scaled - np.floor(scaled) - 0.5) < NEAR * SCALE).sum())


def from_grid(grid: np.ndarray) -> np.ndarray:
    return (grid.astype(np.float64) / SCALE).astype(np.float32)


def on_grid(values: torch.Tensor, what: str) -> np.ndarray:
    """Values that must already lie on the grid (a portable codebook), as integers."""
    grid = to_grid(values, what)
    if not np.array_equal(from_grid(grid), values.detach().cpu().float().numpy()):
        raise HarnessError(f"image tokenizer: {what} is not on the 2^-{GRID_BITS} grid the portable "
                           "encoding needs (a codebook changed outside fit_codebook?)")
    return grid


def nearest(points: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """int64 [N, d] points, int64 [K, d] codes -> int64 [N] index of the nearest code, exactly."""
    if points.shape[1] > MAX_DIM:
        raise HarnessError(f"image tokenizer: code dimension {points.shape[1]} > {MAX_DIM}")
    c = codes.astype(np.float64)
    c_sq = (c * c).sum(1)
    out = np.empty(len(points), np.int64)
    for start in range(0, len(points), CHUNK):
        p = points[start:start + CHUNK].astype(np.float64)
        # integers below 2^53 at every step: exact whatever the BLAS kernel's order
        distance = (p * p).sum(1, keepdims=True) + c_sq - 2.0 * (p @ c.T)
        out[start:start + CHUNK] = distance.argmin(1)  # first index on ties
    return out


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int) -> np.ndarray:
    """k-means++ seeding and Lloyd steps on integer points; int64 [k, d] centres on the grid."""
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(points, k, rng)
    for _ in range(iterations):
        assigned = nearest(points, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assigned, points)
        counts = np.bincount(assigned, minlength=k)[:, None]
        filled = counts[:, 0] > 0
        # round(sum / count), half up, in integers: no float division to round differently
        centres[filled] = (2 * sums[filled] + counts[filled]) // (2 * counts[filled])
    return centres


def _kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = np.empty((k, points.shape[1]), np.int64)
    centres[0] = points[rng.integers(len(points))]
    distance = ((points - centres[0]) ** 2).sum(1)
    if len(points) * int(distance.max(initial=0)) >= 2 ** 62:  # the cumulative sums below must not wrap
        raise HarnessError("image tokenizer: too many or too large latents for the exact k-means")
    for i in range(1, k):
        cumulative = np.cumsum(distance)
        if cumulative[-1] == 0:  # every point is a centre already
            chosen = rng.integers(len(points))
        else:
            chosen = int(np.searchsorted(cumulative, rng.integers(cumulative[-1]), side="right"))
        centres[i] = points[chosen]
        distance = np.minimum(distance, ((points - centres[i]) ** 2).sum(1))
    return centres
