"""The MoVQGAN key map against the real key lists of the released 67M and 270M checkpoints."""

from pathlib import Path

import pytest
import torch
from diffusers import VQModel

from harness.data.image_tokenizer import MOVQ_67M
from harness.data.movq_convert import convert_state_dict
from harness.errors import HarnessError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGS = {"67M": MOVQ_67M, "270M": {**MOVQ_67M, "block_out_channels": (256, 512, 512, 1024)}}
PARAMS = {"67M": 67_832_495, "270M": 270_669_103}


def original_keys(size: str) -> dict[str, torch.Tensor]:
    """Meta tensors with the released checkpoint's names and shapes."""
    state = {}
    for line in (FIXTURES / f"movqgan_{size}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")[:2]
            state[key] = torch.empty([int(v) for v in shape.strip("[]").split(",") if v.strip()], device="meta")
    return state


def target(size: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return VQModel(**CONFIGS[size]).state_dict()


@pytest.mark.parametrize("size", ["67M", "270M"])
def test_every_released_tensor_maps_onto_the_diffusers_model(size):
    original, model = original_keys(size), target(size)
    converted = convert_state_dict(original, model)
    assert set(converted) == set(model) and len(converted) == len(original) == 431
    assert sum(t.numel() for t in converted.values()) == PARAMS[size]


def test_decoder_levels_are_reversed_and_attention_convs_become_linear():
    converted = convert_state_dict(original_keys("67M"), target("67M"))
    original = original_keys("67M")
    # up.3 (lowest resolution, 512 channels, with attention) is diffusers' up_blocks.0
    assert converted["decoder.up_blocks.0.resnets.0.conv1.weight"].shape == original["decoder.up.3.block.0.conv1.weight"].shape
    assert converted["decoder.up_blocks.0.attentions.0.to_q.weight"].shape == (512, 512)


def test_a_foreign_or_misshaped_key_fails_naming_it():
    original, model = original_keys("67M"), target("67M")
    with pytest.raises(HarnessError, match="no rule maps key 'encoder.extra.weight'"):
        convert_state_dict({**original, "encoder.extra.weight": torch.empty(1, device="meta")}, model)
    original["quantize.embedding.weight"] = torch.empty(8192, 4, device="meta")
    with pytest.raises(HarnessError, match=r"quantize.embedding.weight': shape \(8192, 4\)"):
        convert_state_dict(original, model)
