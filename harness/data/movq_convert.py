"""SBER-MoVQGAN checkpoints (ai-forever/MoVQGAN key names) -> diffusers' VQModel(norm_type="spatial").

Pitfalls handled (FACTS.md): the original decoder's `up.L` runs in reverse order relative to
diffusers' `up_blocks`; attention q/k/v/proj_out are 1x1 convolutions where diffusers has linear
layers; decoder norms are SpatialNorms (`norm_layer`, `conv_y`, `conv_b`) whose names carry over.
A key no rule maps, or a tensor whose shape disagrees with the target model, fails naming the key.
"""

from __future__ import annotations

import re

import torch

from harness.errors import HarnessError

UP_LEVELS = 4  # ch_mult [1, 2, 2, 4] in every released size (67M, 102M, 270M)

RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def convert_key(key: str) -> str:
    """The diffusers name of one original key."""
    part, _, rest = key.partition(".")
    if part in ("quantize", "quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise HarnessError(f"MoVQGAN checkpoint: no rule maps key '{key}'")
    return f"{part}.{_convert_coder(part, rest, key)}"


def _convert_coder(part: str, rest: str, key: str) -> str:
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
         lambda m: f"up_blocks.{_up(m[1])}.resnets.{m[2]}.{_resnet(m[3], key)}.{m[4]}"),
        (r"up\.(\d+)\.attn\.(\d+)\.(\w+)\.(.+)",
         lambda m: f"up_blocks.{_up(m[1])}.attentions.{m[2]}.{_attention(part, m[3], key)}.{m[4]}"),
        (r"up\.(\d+)\.upsample\.conv\.(.+)", lambda m: f"up_blocks.{_up(m[1])}.upsamplers.0.conv.{m[2]}"),
    ]
    for pattern, rename in rules:
        match = re.fullmatch(pattern, rest)
        if match:
            return rename(match)
    raise HarnessError(f"MoVQGAN checkpoint: no rule maps key '{key}'")


def _up(level: str) -> int:
    return UP_LEVELS - 1 - int(level)


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
    converted = {}
    for key, tensor in original.items():
        new_key = convert_key(key)
        value = convert_tensor(new_key, tensor)
        if new_key not in target:
            raise HarnessError(f"MoVQGAN checkpoint key '{key}' maps to '{new_key}', which the model lacks")
        if tuple(value.shape) != tuple(target[new_key].shape):
            raise HarnessError(f"MoVQGAN checkpoint key '{key}': shape {tuple(value.shape)}, the model's "
                               f"'{new_key}' is {tuple(target[new_key].shape)}")
        converted[new_key] = value
    missing = sorted(set(target) - set(converted))
    if missing:
        raise HarnessError(f"MoVQGAN checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. '{missing[0]}'")
    return converted
