"""Freezing ablations: which parts of the model do not train.

Part names (the `freeze` list of a run):
    embeddings     the text rows of the input embedding and of the output projection; the image and
                   special rows of the same matrices still train (they are new: freezing them would
                   freeze a random init)
    layernorm      every LayerNorm (per layer and the final one), weight and bias
    attention      every layer's q/k/v and output projections
    ffn            every layer's SwiGLU weights
    layers:A-B     whole blocks A..B inclusive (0-based; `layers:3` is one block)
    layers:lower_half, layers:upper_half   the first or last n_layers // 2 blocks (any size)

Whole tensors are frozen with requires_grad=False and never reach the optimizer. Frozen rows inside
a trained tensor get a zero gradient; AdamW would still move them by weight decay, so such tensors
are trained without weight decay (recorded in the run's model summary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from harness.data.vocab import VocabLayout
from harness.model.open_lm import OpenLM

PARTS = ("embeddings", "layernorm", "attention", "ffn", "layers:lower_half", "layers:upper_half", "layers:A-B")
ROW_FROZEN = ("tok_embeddings.weight", "output.weight")
_LAYERS = re.compile(r"layers:(\d+)(?:-(\d+))?")


class FreezeError(ValueError):
    pass


@dataclass(frozen=True)
class FreezePlan:
    tensors: frozenset[str]   # frozen whole
    text_rows: int            # leading rows of ROW_FROZEN tensors that are frozen (0: none)

    def trainable_count(self, model: torch.nn.Module) -> int:
        total = 0
        for name, param in model.named_parameters():
            if name in self.tensors:
                continue
            frozen_rows = self.text_rows if name in ROW_FROZEN else 0
            total += param.numel() - frozen_rows * param.shape[-1]
        return total

    def no_decay(self, name: str) -> bool:
        return bool(self.text_rows) and name in ROW_FROZEN


def check_parts(parts: list[str], n_layers: int) -> None:
    """Raise FreezeError naming the first part that is not a known name or a valid layer range."""
    for part in parts:
        layer_range(part, n_layers)


def layer_range(part: str, n_layers: int) -> range:
    """The blocks a part freezes whole (empty for the other parts)."""
    half = n_layers // 2
    named = {"layers:lower_half": range(half), "layers:upper_half": range(n_layers - half, n_layers)}
    if part in named:
        return named[part]
    if part in PARTS[:4]:
        return range(0)
    match = _LAYERS.fullmatch(part)
    if not match:
        raise FreezeError(f"unknown part '{part}'; valid: {', '.join(PARTS)}")
    first, last = int(match[1]), int(match[2] or match[1])
    if not first <= last < n_layers:
        raise FreezeError(f"'{part}' is not a layer range within 0-{n_layers - 1}")
    return range(first, last + 1)


def plan_freeze(model: OpenLM, parts: list[str], layout: VocabLayout) -> FreezePlan:
    layers: set[int] = set()
    for part in parts:
        layers.update(layer_range(part, model.arch.n_layers))
    frozen = {name for name, _ in model.named_parameters() if _whole_tensor_frozen(name, parts, layers)}
    return FreezePlan(frozenset(frozen), layout.text_size if "embeddings" in parts else 0)


def _whole_tensor_frozen(name: str, parts: list[str], layers: set[int]) -> bool:
    match = re.match(r"layers\.(\d+)\.", name)
    if match and int(match[1]) in layers:
        return True
    return (("layernorm" in parts and "norm." in name)
            or ("attention" in parts and ".attention." in name)
            or ("ffn" in parts and ".feed_forward." in name))


def apply_freeze(model: OpenLM, plan: FreezePlan) -> None:
    """Turn off gradients of frozen tensors and zero the gradient of frozen rows."""
    for name, param in model.named_parameters():
        if name in plan.tensors:
            param.requires_grad_(False)
        elif plan.text_rows and name in ROW_FROZEN:
            param.register_hook(_zero_rows(plan.text_rows))


def _zero_rows(rows: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:rows] = 0
        return grad
    return hook
