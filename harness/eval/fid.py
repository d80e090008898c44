"""Fréchet distance between image feature sets: FID with the Inception network, and "FD (shapes
classifier)" at the small scales, over the features of a classifier trained on the synthetic world
(harness/eval/shapes_classifier.py), as FID uses Inception's.

The Inception network is the TorchScript file clean-fid uses (`inception-2015-12-05.pt`), loaded
with torch.jit.load from a configured local path and checked by sha256; nothing is downloaded and
torchvision is not needed. How images reach 299x299 follows one of clean-fid's modes (eval.fid_mode,
recorded with every result): "clean" (clean-fid's default, reported as "clean-FID") resizes each
uint8 image with PIL bicubic outside the network; "legacy_tensorflow" (reported as "TF-FID") lets
the network resize bilinearly inside, as TF-FID did. The two give different numbers for the same
images. Reference statistics (mean, covariance) of the real images are computed once per
(extractor, mode, reference set) and cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from harness.errors import HarnessError

# The TF-FID Inception as TorchScript (StyleGAN2-ADA's translation, the file clean-fid loads). Its
# sha256 is configured (eval.inception_sha256), not written here: it could not be read from these
# machines, and a digest typed from memory would be worse than none.
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_SOURCE = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"

# clean-fid's modes for that file (cleanfid/resize.py build_resizer, cleanfid/features.py) and the
# name each result is reported under (eval.fid_mode chooses; FID_MODE is its default).
METRIC_OF_MODE = {"clean": "clean-FID", "legacy_tensorflow": "TF-FID"}
FID_MODE = "clean"
INCEPTION_SIZE = 299
# pytorch-fid's and clean-fid's tolerance on the imaginary part of the diagonal of (S_a S_b)^(1/2).
IMAGINARY_TOLERANCE = 1e-3


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
    root = _product_root(a.covariance, b.covariance)
    return float(difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * np.trace(root))


def _product_root(s_a: np.ndarray, s_b: np.ndarray) -> np.ndarray:
    """(S_a S_b)^(1/2), real. For two covariances it is real up to rounding, whose small imaginary
    part is dropped (as TF-FID, pytorch-fid and clean-fid do); an imaginary diagonal beyond their
    tolerance means the statistics are not covariances (or are degenerate), and dropping it would
    report a number that is no Fréchet distance, so it stops the job."""
    root = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(root).all():  # a singular product: regularise both, as TF-FID does
        offset = np.eye(len(s_a)) * 1e-6
        root = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise HarnessError(f"Fréchet distance: (S_a S_b)^(1/2) has an imaginary part of up to "
                               f"{np.abs(root.imag).max():.4g} (diagonal beyond {IMAGINARY_TOLERANCE}); the "
                               f"feature statistics are not valid covariances (e.g. too few samples or a "
                               f"corrupt reference cache)")
        root = root.real
    return root


# --- feature extractors ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Extractor:
    """Images (uint8 [B, H, W, 3]) -> features [B, D], with the name results are labelled by."""

    metric: str                 # "clean-FID", "TF-FID" or "FD (shapes classifier)"
    identity: str               # what the cache key and provenance record
    features: Callable[[np.ndarray], np.ndarray]
    fid_mode: str | None = None  # clean-fid's mode (FID_MODE); None: no Inception, no FID mode


def inception(path: Path, expected_sha256: str | None, device: str = "cpu", mode: str = FID_MODE) -> Extractor:
    """The Inception network of TF-FID from a local TorchScript file, checked against the
    configured sha256 (always recorded; without one configured, the result says "unverified"),
    fed as clean-fid's `mode` feeds it."""
    if mode not in METRIC_OF_MODE:
        raise HarnessError(f"FID mode '{mode}' is not one of clean-fid's: {', '.join(METRIC_OF_MODE)}")
    if not path.is_file():
        raise HarnessError(f"Inception weights {path} not found (eval.inception; the file clean-fid uses: "
                           f"{INCEPTION_SOURCE})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise HarnessError(f"{path}: sha256 {digest} differs from eval.inception_sha256={expected_sha256}")
    network = torch.jit.load(str(path), map_location=device).eval()

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        if mode == "clean":
            # Resized outside, so the network's own bilinear resize is skipped: its `layers` take
            # the [-1, 1]-scaled 299x299 input directly, as clean-fid's InceptionV3W does.
            x = torch.from_numpy(clean_resize(images)).permute(0, 3, 1, 2).to(device)
            return network.layers((x - 128) / 128).reshape(len(images), -1).cpu().numpy()
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
        # legacy_tensorflow: the module resizes bilinearly to 299x299 itself, from uint8-range floats.
        return network(x.float(), return_features=True).cpu().numpy()

    verified = "verified" if expected_sha256 else "unverified: set eval.inception_sha256"
    # The mode comes first: the reference cache's name keeps only the identity's first 80 characters.
    return Extractor(METRIC_OF_MODE[mode], f"inception {mode} sha256:{digest} ({verified})", features, mode)


def clean_resize(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 299, 299, 3] in [0, 255], as clean-fid's "clean" mode
    resizes: each channel as a float ("F") PIL image, bicubic, unquantised, clipped to [0, 255]."""
    return np.stack([np.stack([_resize_channel(image[..., c]) for c in range(3)], -1) for image in images])


def _resize_channel(channel: np.ndarray) -> np.ndarray:
    resized = Image.fromarray(channel.astype(np.float32)).resize((INCEPTION_SIZE, INCEPTION_SIZE),
                                                                 resample=Image.BICUBIC)
    return np.asarray(resized, dtype=np.float32).clip(0, 255)


def shapes_classifier(path: Path, expected_sha256: str | None, image_size: int) -> Extractor:
    """The small scales' extractor: the penultimate features of the versioned shapes classifier
    (harness/eval/shapes_classifier.py), checked by sha256 and by the image size it was trained on."""
    from safetensors import safe_open

    from harness.eval import shapes_classifier as sc

    model = sc.load(path, expected_sha256)
    with safe_open(str(path / sc.WEIGHTS), "pt") as handle:
        trained_on = int((handle.metadata() or {}).get("image_size", 0))
    if trained_on != image_size:
        raise HarnessError(f"shapes classifier {path} was trained on {trained_on}px images; these are "
                           f"{image_size}px (eval.features must name the classifier of this scale)")

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        return model.features(sc.to_input(images)).numpy()

    digest = sc.file_sha256(path / sc.WEIGHTS)
    return Extractor(sc.METRIC, f"shapes classifier {path.name} sha256:{digest}", features)


def statistics_of(extractor: Extractor, batches, cache: Path | None = None) -> Statistics:
    """Statistics of the images in `batches` (an iterable of uint8 arrays), cached at `cache`."""
    if cache is not None and cache.exists():
        return Statistics.load(cache)
    stats = Statistics.of(np.concatenate([extractor.features(batch) for batch in batches]))
    if cache is not None:
        stats.save(cache)
        cache.with_suffix(".json").write_text(json.dumps({"extractor": extractor.identity, "count": stats.count}) + "\n")
    return stats
