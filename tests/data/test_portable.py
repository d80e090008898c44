"""The portable image encoding (harness/data/portable.py): exact distances, an exact k-means,
weights drawn without torch's vectorised fills, and a data build whose bytes do not depend on the
CPU's vector ISA or thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.data import portable
from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config
from harness.data.shards import MANIFEST
from harness.errors import HarnessError
from tests.conftest import REPO


def brute_force_nearest(points: np.ndarray, codes: np.ndarray) -> list[int]:
    """Python integers: no rounding anywhere; the first of equal distances wins."""
    out = []
    for p in points.tolist():
        distances = [sum((a - b) ** 2 for a, b in zip(p, c)) for c in codes.tolist()]
        out.append(distances.index(min(distances)))
    return out


def test_nearest_codes_are_exact_and_ties_go_to_the_lowest_id():
    rng = np.random.default_rng(0)
    codes = rng.integers(-portable.LIMIT + 1, portable.LIMIT, (50, 4))
    points = np.concatenate([rng.integers(-portable.LIMIT + 1, portable.LIMIT, (200, 4)), codes[:5]])
    assert portable.nearest(points, codes).tolist() == brute_force_nearest(points, codes)
    tied = np.array([[0, 0, 0, 0], [2, 0, 0, 0], [-2, 0, 0, 0], [2, 0, 0, 0]])
    assert portable.nearest(np.array([[0, 0, 0, 0], [1, 0, 0, 0]]), tied[1:]).tolist() == [0, 0]


def test_the_kmeans_fit_is_a_fixed_point_of_exact_integer_means():
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.integers(-400, 400, (300, 3)) + centre for centre in ((0, 0, 0), (5000, 0, 0))])
    centres = portable.kmeans(points, 8, seed=3, iterations=30)
    assert np.array_equal(centres, portable.kmeans(points, 8, seed=3, iterations=30))
    assigned = portable.nearest(points, centres)
    for k in np.unique(assigned):
        members = points[assigned == k]
        assert np.array_equal(centres[k], (2 * members.sum(0) + len(members)) // (2 * len(members)))
    assert not np.array_equal(centres, portable.kmeans(points, 8, seed=4, iterations=30))


def test_weights_do_not_follow_torchs_random_state_and_keep_pytorchs_bounds():
    config = tiny_movq_config(64)
    torch.manual_seed(0)
    first = ImageTokenizer.random(config, seed=5)
    torch.manual_seed(1)
    assert ImageTokenizer.random(config, seed=5).fingerprint() == first.fingerprint()
    assert ImageTokenizer.random(config, seed=6).fingerprint() != first.fingerprint()
    conv = first.model.encoder.conv_in
    bound = 1 / (conv.weight[0].numel() ** 0.5)
    assert 0.9 * bound < conv.weight.abs().max() <= bound
    assert torch.all(first.model.encoder.conv_norm_out.weight == 1)


def test_portable_codes_are_the_exact_nearest_of_the_rounded_float64_latents():
    tokenizer = ImageTokenizer.random(tiny_movq_config(64), seed=2)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = torch.nn.Sequential(tokenizer.model.encoder, tokenizer.model.quant_conv).double()(x.double())
    grid = np.rint(latents.permute(0, 2, 3, 1).reshape(-1, 4).numpy() * 2 ** portable.GRID_BITS).astype(np.int64)
    codes = np.rint(tokenizer.codebook.detach().double().numpy() * 2 ** portable.GRID_BITS).astype(np.int64)
    assert tokenizer.encode_tensor(x).flatten().tolist() == brute_force_nearest(grid, codes)


def test_a_codebook_off_the_grid_or_a_latent_out_of_range_is_refused(tmp_path):
    tokenizer = ImageTokenizer.random(tiny_movq_config(64), seed=2)
    tokenizer.save(tmp_path / "tok")
    assert ImageTokenizer.load(tmp_path / "tok", "w").encoding == portable.DESCRIPTION
    with torch.no_grad():
        tokenizer.codebook[0, 0] += 1e-6
    with pytest.raises(HarnessError, match="not on the 2\\^-12 grid"):
        tokenizer.encode_tensor(torch.zeros(1, 3, 8, 8))
    with pytest.raises(HarnessError, match="outside"):
        portable.to_grid(np.array([float(portable.LIMIT)]), "a latent")


CPU_PATHS = [  # (environment, why)
    {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"},   # ATen's scalar kernels
    {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "2"},      # AVX2 (capped there on AVX-512 CPUs)
    {"ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "2"},      # oneDNN without AVX
    {"OMP_NUM_THREADS": "1"},                                     # one thread, this CPU's best ISA
]


def test_the_micro_build_has_the_same_bytes_on_every_cpu_path(data_root, tmp_path):
    """The session's micro dataset (this CPU's default path) against rebuilds on other vector ISAs
    and thread counts: the same manifest, so the same data hash, codes and run ids."""
    (reference,) = data_root.glob(f"micro-*/{MANIFEST}")
    for i, extra in enumerate(CPU_PATHS):
        root = tmp_path / str(i)
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
        proc = subprocess.run([sys.executable, "-m", "harness", "data", "build", "scale=micro",
                               f"paths.data_root={root}"], cwd=REPO, env={**env, **extra},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "rounding boundary" not in proc.stdout  # no latent near enough to round otherwise elsewhere
        (built,) = root.glob(f"micro-*/{MANIFEST}")
        assert built.read_bytes() == reference.read_bytes(), f"{extra}: the manifest differs"
