"""Load the released open_lm checkpoints (`open_lm_1b.pt`) into this open_lm implementation.

The file holds `{"state_dict": ...}` (a training checkpoint may prefix every key with `module.`).
The key map is the identity: this implementation uses open_lm's names (tests check them against
shared/fixtures/open_lm_1b_keys.txt). Anything that does not match fails loudly, naming the key.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.model.open_lm import OpenLM


def released_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise HarnessError(f"released checkpoint {path} does not exist (set its local path; nothing is downloaded)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise several types
        raise HarnessError(f"released checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise HarnessError(f"released checkpoint {path} holds no state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def check_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    """Raise naming every missing, unexpected or mis-shaped key (the first few of each kind)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
                if keys]
    if problems:
        raise HarnessError(f"{source} does not match the model: {'; '.join(problems)}")


def load_released(model: OpenLM, path: Path) -> None:
    state = released_state_dict(path)
    check_keys(state, model.state_dict(), path)
    model.load_state_dict(state, strict=True)
