"""SBER-MoVQGAN checkpoints (ai-forever/MoVQGAN key names) -> diffusers' VQModel(norm_type="spatial").

Pitfalls handled (FACTS.md): the original decoder's `up.L` runs in reverse order relative to
diffusers' `up_blocks`, so every map takes the model's level count (any ch_mult length; resnet and
attention indices carry over, so any num_res_blocks and attention at any level map too); attention
q/k/v/proj_out are 1x1 convolutions where diffusers has linear layers; decoder norms are
SpatialNorms (`norm_layer`, `conv_y`, `conv_b`) whose names carry over.
A key no rule maps, or a tensor whose shape disagrees with the target model, fails naming the key.

The inverse map (`to_original_state_dict`) exists so tests can write synthetic checkpoints in the real
key format from tiny diffusers models; `read_checkpoint` reads a released file as it is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError

RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def levels_of(state: Mapping[str, Any]) -> int:
    """How many resolution levels (len(ch_mult)) a diffusers VQModel state dict has: its decoder up blocks.
    The decoder's level order flips between the two namings, so every map needs this count."""
    found = [int(m[1]) for key in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", key))]
    return max(found) + 1 if found else 0


def convert_key(key: str, levels: int) -> str:
    """The diffusers name of one original key, in a model of `levels` resolution levels."""
    part, _, rest = key.partition(".")
    if part in ("quantize", "quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise HarnessError(f"MoVQGAN checkpoint: no rule maps key '{key}'")
    return f"{part}.{_convert_coder(part, rest, key, levels)}"


def _convert_coder(part: str, rest: str, key: str, levels: int) -> str:
    rules: list[tuple[str, object]] = [
        (r"conv_in\.(.+)", lambda m: f"conv_in.{m[1]}"),
        (r"conv_out\.(.+)", lambda m: f"conv_out.{m[1]}"),
        (r"norm_out\.(.+)", lambda m: f"conv_norm_out.{m[1]}"),
        (r"mid\.block_(\d)\.(\w+)\.(.+)", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.{_resnet(m[2], key)}.{m[3]}"),
        (r"mid\.attn_1\.(\w+)\.(.+)", lambda m: f"mid_block.attentions.0.{_attention(part, m[1], key)}.{m[2]}"),
        (r"down\.(\d+)\.block\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"down_blocks.{m[1]}.resnets.{m[2]}.{_resnet(m[3], key)}.{m[4]}"),
        (r"down\.(\d+)\.attn\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"down_blocks.{m[1]}.attentions.{m[2]}.{_attention(part, m[3], key)}.{m[4]}"),
        (r"down\.(\d+)\.downsample\.conv\.(.+)", lambda m: f"down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
        (r"up\.(\d+)\.block\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"up_blocks.{_up(m[1], levels, key)}.resnets.{m[2]}.{_resnet(m[3], key)}.{m[4]}"),
        (r"up\.(\d+)\.attn\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"up_blocks.{_up(m[1], levels, key)}.attentions.{m[2]}.{_attention(part, m[3], key)}.{m[4]}"),
        (r"up\.(\d+)\.upsample\.conv\.(.+)",
         lambda m: f"up_blocks.{_up(m[1], levels, key)}.upsamplers.0.conv.{m[2]}"),
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, rest)
        if match:
            return rename(match)
    raise HarnessError(f"MoVQGAN checkpoint: no rule maps key '{key}'")


def _up(level: str, levels: int, key: str) -> int:
    """The original's decoder `up.L` is its level L (0 = full resolution); diffusers' `up_blocks` run
    from the lowest resolution up. The map is its own inverse."""
    if not 0 <= int(level) < levels:
        raise HarnessError(f"MoVQGAN key '{key}' names decoder level {level}; the model has {levels} levels")
    return levels - 1 - int(level)


def _resnet(name: str, key: str) -> str:
    if name not in RESNET:
        raise HarnessError(f"MoVQGAN checkpoint: unknown resnet part in '{key}'")
    return RESNET[name]


def _attention(part: str, name: str, key: str) -> str:
    if name == "norm":  # decoder attention norms are SpatialNorms
        return "spatial_norm" if part == "decoder" else "group_norm"
    if name not in ATTENTION:
        raise HarnessError(f"MoVQGAN checkpoint: unknown attention part in '{key}'")
    return ATTENTION[name]


def convert_tensor(new_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """1x1 convolution weights of attention become linear weights."""
    if re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", new_key) and tensor.ndim == 4:
        return tensor[:, :, 0, 0]
    return tensor


def convert_state_dict(original: dict[str, torch.Tensor],
                       target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map every original tensor onto the target model's names and shapes; fail naming the key."""
    converted, levels = {}, levels_of(target)
    for key, tensor in original.items():
        new_key = convert_key(key, levels)
        value = convert_tensor(new_key, tensor)
        if new_key not in target:
            raise HarnessError(f"MoVQGAN checkpoint key '{key}' maps to '{new_key}', which the model lacks")
        if tuple(value.shape) != tuple(target[new_key].shape):
            raise HarnessError(f"MoVQGAN checkpoint key '{key}': shape {tuple(value.shape)}, the model's "
                               f"'{new_key}' is {tuple(target[new_key].shape)}")
        converted[new_key] = value
    missing = sorted(set(target) - set(converted))
    if missing:
        raise HarnessError(f"MoVQGAN checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. "
                           f"'{original_key(missing[0], levels)}' (the model's '{missing[0]}')")
    return converted


# ---- diffusers -> original names (the inverse of convert_key) ----

INVERSE_RESNET = {new: old for old, new in RESNET.items()}
INVERSE_ATTENTION = {**{new: old for old, new in ATTENTION.items()}, "group_norm": "norm", "spatial_norm": "norm"}
_ATTN_PART = r"(to_q|to_k|to_v|to_out\.0|group_norm|spatial_norm)"


def original_key(key: str, levels: int) -> str:
    """The original SBER-MoVQGAN name of one diffusers VQModel key, in a model of `levels` levels."""
    part, _, rest = key.partition(".")
    if part in ("quantize", "quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise HarnessError(f"VQModel key '{key}' has no MoVQGAN name")
    rules: list[tuple[str, object]] = [
        (r"conv_in\.(.+)", lambda m: f"conv_in.{m[1]}"),
        (r"conv_out\.(.+)", lambda m: f"conv_out.{m[1]}"),
        (r"conv_norm_out\.(.+)", lambda m: f"norm_out.{m[1]}"),
        (r"mid_block\.resnets\.(\d)\.(\w+)\.(.+)",
         lambda m: f"mid.block_{int(m[1]) + 1}.{_inverse(INVERSE_RESNET, m[2], key)}.{m[3]}"),
        (rf"mid_block\.attentions\.0\.{_ATTN_PART}\.(.+)",
         lambda m: f"mid.attn_1.{_inverse(INVERSE_ATTENTION, m[1], key)}.{m[2]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"down.{m[1]}.block.{m[2]}.{_inverse(INVERSE_RESNET, m[3], key)}.{m[4]}"),
        (rf"down_blocks\.(\d+)\.attentions\.(\d+)\.{_ATTN_PART}\.(.+)",
         lambda m: f"down.{m[1]}.attn.{m[2]}.{_inverse(INVERSE_ATTENTION, m[3], key)}.{m[4]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", lambda m: f"down.{m[1]}.downsample.conv.{m[2]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"up.{_up(m[1], levels, key)}.block.{m[2]}.{_inverse(INVERSE_RESNET, m[3], key)}.{m[4]}"),
        (rf"up_blocks\.(\d+)\.attentions\.(\d+)\.{_ATTN_PART}\.(.+)",
         lambda m: f"up.{_up(m[1], levels, key)}.attn.{m[2]}.{_inverse(INVERSE_ATTENTION, m[3], key)}.{m[4]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda m: f"up.{_up(m[1], levels, key)}.upsample.conv.{m[2]}"),
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, rest)
        if match:
            return f"{part}.{rename(match)}"
    raise HarnessError(f"VQModel key '{key}' has no MoVQGAN name")


def _inverse(table: dict[str, str], name: str, key: str) -> str:
    if name not in table:
        raise HarnessError(f"VQModel key '{key}' has no MoVQGAN name")
    return table[name]


def to_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers VQModel state dict in the released checkpoints' format (names, 1x1-conv attention)."""
    original, levels = {}, levels_of(state)
    for key, tensor in state.items():
        linear = re.search(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$", key) and tensor.ndim == 2
        original[original_key(key, levels)] = tensor[:, :, None, None] if linear else tensor
    return original


# ---- reading a checkpoint file ----

def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a .ckpt/.pt/.safetensors file: flat (the released files) or under "state_dict"
    (a Lightning training checkpoint). Pickles load with weights_only=True: no code in a file runs."""
    if not path.is_file():
        raise HarnessError(f"MoVQGAN checkpoint {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for a bad file; all mean "unreadable"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"MoVQGAN checkpoint {path} could not be read: {reason}") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise HarnessError(f"MoVQGAN checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise HarnessError(f"MoVQGAN checkpoint {path}: entry '{key}' is not a tensor")
    return loaded
