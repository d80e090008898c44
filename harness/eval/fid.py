"""Fréchet distance between image feature sets: FID with the Inception network, and "FD (random
extractor)" at smoke scale, where no Inception weights exist.

The Inception network is the TorchScript file clean-fid uses (`inception-2015-12-05.pt`), loaded
with torch.jit.load from a configured local path and checked by sha256; nothing is downloaded and
torchvision is not needed. Reference statistics (mean, covariance) of the real images are computed
once per (extractor, reference set) and cached beside the dataset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from harness.errors import HarnessError

# The TF-FID Inception as TorchScript (StyleGAN2-ADA's translation, the file clean-fid loads). Its
# sha256 is configured (eval.inception_sha256), not written here: it could not be read from these
# machines, and a digest typed from memory would be worse than none.
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_SOURCE = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


@dataclass(frozen=True)
class Statistics:
    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> "Statistics":
        features = np.asarray(features, dtype=np.float64)
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, mean=self.mean, covariance=self.covariance, count=self.count)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Statistics":
        with np.load(path) as data:
            return cls(data["mean"], data["covariance"], int(data["count"]))


def frechet_distance(a: Statistics, b: Statistics) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), as in TF-FID and clean-fid."""
    difference = a.mean - b.mean
    root = linalg.sqrtm(a.covariance @ b.covariance)
    if not np.isfinite(root).all():  # a singular product: regularise both, as TF-FID does
        offset = np.eye(len(a.mean)) * 1e-6
        root = linalg.sqrtm((a.covariance + offset) @ (b.covariance + offset))
    root = root.real
    return float(difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * np.trace(root))


# --- feature extractors ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Extractor:
    """Images (uint8 [B, H, W, 3]) -> features [B, D], with the name results are labelled by."""

    metric: str                 # "FID" or "FD (random extractor)"
    identity: str               # what the cache key and provenance record
    features: Callable[[np.ndarray], np.ndarray]


def inception(path: Path, expected_sha256: str | None, device: str = "cpu") -> Extractor:
    """The Inception network of TF-FID from a local TorchScript file, checked against the
    configured sha256 (always recorded; without one configured, the result says "unverified")."""
    if not path.is_file():
        raise HarnessError(f"Inception weights {path} not found (eval.inception; the file clean-fid uses: "
                           f"{INCEPTION_SOURCE})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise HarnessError(f"{path}: sha256 {digest} differs from eval.inception_sha256={expected_sha256}")
    network = torch.jit.load(str(path), map_location=device).eval()

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
        # The TorchScript module resizes to 299x299 itself and expects uint8-range floats.
        return network(x.float(), return_features=True).cpu().numpy()

    verified = "verified" if expected_sha256 else "unverified: set eval.inception_sha256"
    return Extractor("FID", f"inception sha256:{digest} ({verified})", features)


def random_extractor(seed: int = 0, dim: int = 64) -> Extractor:
    """A fixed random conv net: a deterministic feature map for smoke-scale plumbing, never FID."""
    generator = torch.Generator().manual_seed(seed)
    kernels = [torch.randn(32, 3, 3, 3, generator=generator) * 0.3,
               torch.randn(dim, 32, 3, 3, generator=generator) * 0.1]

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        x = F.relu(F.conv2d(x, kernels[0], stride=2))
        x = F.relu(F.conv2d(x, kernels[1], stride=2))
        return x.mean((2, 3)).numpy()

    return Extractor("FD (random extractor)", f"random conv net (seed {seed}, dim {dim})", features)


def statistics_of(extractor: Extractor, batches, cache: Path | None = None) -> Statistics:
    """Statistics of the images in `batches` (an iterable of uint8 arrays), cached at `cache`."""
    if cache is not None and cache.exists():
        return Statistics.load(cache)
    stats = Statistics.of(np.concatenate([extractor.features(batch) for batch in batches]))
    if cache is not None:
        stats.save(cache)
        cache.with_suffix(".json").write_text(json.dumps({"extractor": extractor.identity, "count": stats.count}) + "\n")
    return stats
