"""How well an image tokenizer round-trips held-out synthetic images: PSNR, codebook usage, and
the attributes the caption-compliance oracle still finds in the reconstructions.

The round trip is the one the datasets and the generated images see: `encode` (for the
tokenizers the harness builds, the portable path the data build uses) then `decode_to_uint8`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.config.schema import DataConfig
from harness.data import synthetic
from harness.data.image_tokenizer import ImageTokenizer
from harness.eval import compliance

GRID_PAIRS = 8     # images in the saved grid: real above, reconstruction below
ENCODE_BATCH = 64


def held_out(data: DataConfig, count: int) -> list[synthetic.CaptionedImage]:
    """The first `count` images of the val split: the dataset's own val images come first."""
    return [synthetic.captioned_image(i, "val", data.image_size, data.seed) for i in range(count)]


def round_trip(tokenizer: ImageTokenizer, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [B, H, W, 3] -> (codes [B, N], reconstructions uint8 [B, H, W, 3])."""
    codes, images = [], []
    for start in range(0, len(pixels), ENCODE_BATCH):
        chunk = tokenizer.encode(pixels[start:start + ENCODE_BATCH])
        codes.append(chunk)
        images.append(tokenizer.decode_to_uint8(torch.from_numpy(chunk)))
    return np.concatenate(codes), np.concatenate(images)


def psnr(real: np.ndarray, fake: np.ndarray) -> float:
    """PSNR in dB over the whole set (peak 255)."""
    mse = float(np.mean((real.astype(np.float64) - fake.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def usage(codes: np.ndarray, codebook_size: int) -> dict:
    """Codes in use, their share, dead codes and the perplexity of the code distribution."""
    counts = np.bincount(codes.ravel(), minlength=codebook_size)
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {"used": used, "share": used / codebook_size, "dead": codebook_size - used,
            "perplexity": float(np.exp(-(p * np.log(p)).sum())), "codes_seen": int(counts.sum())}


def oracle(images: np.ndarray, captions: list[str]) -> dict:
    """The compliance analyser's verdicts, with accuracy over every attribute check pooled."""
    summary = compliance.score(images, captions)
    hits = sum(a["accuracy"] * a["n"] for a in summary["attributes"].values())
    checks = sum(a["n"] for a in summary["attributes"].values())
    return {"attribute_accuracy": hits / checks, **summary}


def report(tokenizer: ImageTokenizer, data: DataConfig, count: int, grid: Path | None = None) -> dict:
    samples = held_out(data, count)
    real = np.stack([s.pixels for s in samples])
    captions = [s.caption for s in samples]
    codes, fake = round_trip(tokenizer, real)
    if grid is not None:
        save_grid(real[:GRID_PAIRS], fake[:GRID_PAIRS], grid)
    return {"images": count, "split": "val", "psnr": psnr(real, fake),
            "usage": usage(codes, tokenizer.codebook_size), "oracle": oracle(fake, captions),
            "oracle_on_real_images": oracle(real, captions)["attribute_accuracy"],
            "weights": tokenizer.weights, "encoding": tokenizer.encoding}


def save_grid(real: np.ndarray, fake: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [np.concatenate(list(real), axis=1), np.concatenate(list(fake), axis=1)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
