"""Consolidated model files: what `init.source` and evaluation read.

`checkpoints/<name>/model.pt` holds the full state dict, the architecture (its positional type
included) and the vocabulary layout, and the sha256 of the text tokenizer its text rows were trained
with: what the weights assume, checked before a pre-trained init starts from them.
`checkpoints/<name>/COMPLETE` is written last, so a file without it (a kill mid-write) never counts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.train.writes import NotWritten, torch_save, why

MODEL_FILE = "model.pt"
COMPLETE = "COMPLETE"


def save_model_file(directory: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, Any],
                    layout: dict[str, Any], step: int, tokens: int, text_tokenizer: str | None) -> Path:
    """Write `model.pt` (fp32) and then the COMPLETE marker; returns the model file's path. Raises
    NotWritten, one line naming the file and the space left, when it does not fit."""
    payload = {
        "state_dict": {k: v.detach().float().cpu() for k, v in state_dict.items()},
        "architecture": architecture,
        "layout": layout,
        "text_tokenizer": text_tokenizer,
        "step": step,
        "tokens": tokens,
    }
    partial = directory / f"{MODEL_FILE}.partial"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / COMPLETE).unlink(missing_ok=True)
        torch_save(payload, partial)
        os.replace(partial, directory / MODEL_FILE)
        (directory / COMPLETE).write_text(f"step {step} tokens {tokens}\n")
    except OSError as exc:
        raise NotWritten(f"model file {directory / MODEL_FILE} could not be written: {why(exc, directory)}") from None
    return directory / MODEL_FILE


def load_model_file(path: Path) -> dict[str, Any]:
    """Load a model file (or a checkpoint directory holding one); errors name the file."""
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.exists():
        raise HarnessError(f"model file {path} does not exist")
    if path.name == MODEL_FILE and not (path.parent / COMPLETE).exists():
        raise HarnessError(f"model file {path} is incomplete (no {COMPLETE} marker beside it)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise HarnessError(f"model file {path} is unreadable: {type(exc).__name__}: {exc}") from None
    missing = {"state_dict", "architecture"} - set(payload) if isinstance(payload, dict) else {"state_dict"}
    if missing:
        raise HarnessError(f"model file {path} lacks {sorted(missing)}: not written by this harness")
    return payload


def recorded_assumptions(path: Path) -> dict[str, Any]:
    """The positional type and text tokenizer hash a model file records, read without loading its
    tensors (memory-mapped): cheap enough for submit to check a 1B model's."""
    path = path / MODEL_FILE if path.is_dir() else path
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise HarnessError(f"model file {path} is unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("architecture"), dict):
        raise HarnessError(f"model file {path} holds no architecture: not written by this harness")
    return {"positional": payload["architecture"].get("positional"), "text_tokenizer": payload.get("text_tokenizer")}
