"""The shapes classifier: a small CNN that reads a synthetic image's attributes, and whose
penultimate features give the small scales' Fréchet distance, "FD (shapes classifier)", the way
FID uses Inception's pool features.

It predicts what a caption says: the background colour, and per place (top left ... centre)
whether a shape is there and its colour, shape and size. Trained once per image size by
experiment=train_classifier (harness/train/classifier.py) and versioned under harness/artifacts/;
evaluation loads the versioned file and checks its sha256. Paper scale keeps Inception FID.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.data import synthetic
from harness.errors import HarnessError
from harness.eval import compliance

WEIGHTS = "classifier.safetensors"
METRIC = "FD (shapes classifier)"
FEATURES = 128
PLACES = list(synthetic.PLACES)
COLOURS = list(synthetic.COLOURS)
# Classes per head; index 0 of the per-place heads means "no shape here".
HEADS = {"background": len(COLOURS),
         **{f"{place}/colour": len(COLOURS) + 1 for place in PLACES},
         **{f"{place}/shape": len(synthetic.SHAPES) + 1 for place in PLACES},
         **{f"{place}/size": len(synthetic.SIZES) + 1 for place in PLACES}}


class ShapesClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keeps where things are: places matter
            nn.Linear(64 * 16, FEATURES), nn.ReLU(),
        )
        self.heads = nn.Linear(FEATURES, sum(HEADS.values()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.heads(self.features(images))
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=1)))


def to_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def labels(captions: list[str]) -> dict[str, torch.Tensor]:
    """Per head, the class index each caption implies."""
    out = {name: torch.zeros(len(captions), dtype=torch.long) for name in HEADS}
    for i, caption in enumerate(captions):
        parsed = compliance.parse(caption)
        out["background"][i] = COLOURS.index(parsed.background)
        for phrase in parsed.phrases:
            out[f"{phrase.place}/colour"][i] = COLOURS.index(phrase.colour) + 1
            out[f"{phrase.place}/shape"][i] = synthetic.SHAPES.index(phrase.shape) + 1
            out[f"{phrase.place}/size"][i] = list(synthetic.SIZES).index(phrase.size) + 1
    return out


def save(model: ShapesClassifier, directory: Path, image_size: int) -> str:
    """Write the weights (safetensors: the same bytes for the same tensors) and return their sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"image_size": str(image_size),
                                                         "heads": json.dumps(HEADS)})
    return file_sha256(directory / WEIGHTS)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(directory: Path, expected_sha256: str | None) -> ShapesClassifier:
    path = directory / WEIGHTS
    if not path.is_file():
        raise HarnessError(f"shapes classifier {path} not found (eval.features; make it with "
                           "`harness submit experiment=train_classifier` and `harness publish`)")
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise HarnessError(f"{path}: sha256 {digest} differs from eval.features_sha256={expected_sha256}")
    model = ShapesClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: name it
        raise HarnessError(f"shapes classifier {path} is unreadable ({type(exc).__name__}: {exc})") from None
    return model.eval()


@torch.no_grad()
def accuracy(model: ShapesClassifier, pixels: np.ndarray, captions: list[str]) -> dict[str, float]:
    """Per attribute kind, the share of heads answered right (per-place heads: all places)."""
    predicted = model(to_input(pixels))
    truth = labels(captions)
    kinds: dict[str, list[float]] = {}
    for name, logits in predicted.items():
        kind = name.split("/")[-1]
        kinds.setdefault(kind, []).append((logits.argmax(1) == truth[name]).float().mean().item())
    return {kind: float(np.mean(values)) for kind, values in kinds.items()}
