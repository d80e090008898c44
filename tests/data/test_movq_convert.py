"""The MoVQGAN key map against the real key lists of the released 67M and 270M checkpoints, its
inverse, layouts other than the released one, and reading checkpoint files as they are stored."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import VQModel

from harness.data.image_tokenizer import MOVQ_VARIANTS, TINY_DDCONFIG, vqmodel_config
from harness.data.movq_convert import (
    convert_key, convert_state_dict, original_key, read_checkpoint, to_original_state_dict,
)
from harness.errors import HarnessError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGS = MOVQ_VARIANTS
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


def fixture_config(size: str) -> dict:
    """VQModel kwargs built from the ddconfig recorded in the key list's own header."""
    header = (FIXTURES / f"movqgan_{size}_keys.txt").read_text().splitlines()[1]
    ddconfig, codebook = header.removeprefix("# ddconfig=").split("} ")
    params = dict(item.split("=") for item in codebook.split())
    return vqmodel_config(json.loads(ddconfig + "}"), int(params["embed_dim"]), int(params["n_embed"]))


@pytest.mark.parametrize("size", ["67M", "270M"])
def test_every_released_tensor_maps_onto_the_diffusers_model(size):
    original, model = original_keys(size), target(size)
    converted = convert_state_dict(original, model)
    assert set(converted) == set(model) and len(converted) == len(original) == 431
    assert sum(t.numel() for t in converted.values()) == PARAMS[size]


@pytest.mark.parametrize("size", ["67M", "270M"])
def test_the_released_key_list_is_covered_by_the_model_its_recorded_ddconfig_builds(size):
    assert fixture_config(size) == CONFIGS[size]
    with torch.device("meta"):
        model = VQModel(**fixture_config(size)).state_dict()
    assert set(to_original_state_dict(model)) == set(original_keys(size))


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


@pytest.mark.parametrize("size", ["67M", "270M"])
def test_the_inverse_map_gives_back_the_released_names_and_shapes(size):
    original, model = original_keys(size), target(size)
    back = to_original_state_dict(convert_state_dict(original, model))
    assert list(back) == list(original)
    assert all(back[k].shape == original[k].shape for k in original)  # attention linears are 1x1 convs again


@pytest.mark.parametrize("size", ["67M", "102M", "270M"])
def test_every_diffusers_key_round_trips_through_the_original_name(size):
    model = target(size)
    assert set(convert_state_dict(to_original_state_dict(model), model)) == set(model)
    with pytest.raises(HarnessError, match="VQModel key 'encoder.extra.weight' has no MoVQGAN name"):
        original_key("encoder.extra.weight", 4)


def layout(ch_mult: list[int], attn_resolutions: list[int], num_res_blocks: int = 1) -> dict[str, torch.Tensor]:
    ddconfig = {**TINY_DDCONFIG, "ch_mult": ch_mult, "attn_resolutions": attn_resolutions,
                "num_res_blocks": num_res_blocks}
    with torch.device("meta"):
        return VQModel(**vqmodel_config(ddconfig, embed_dim=4, n_embed=16)).state_dict()


@pytest.mark.parametrize("ch_mult, attn_resolutions, num_res_blocks", [
    ([1, 2], [256], 1),                 # two levels, attention at full resolution
    ([1, 2, 1, 1], [64], 3),            # attention at an inner level, three resnets
    ([1, 1, 2, 2, 4], [32, 16], 2),     # five levels (16x downsampling), attention at two
])
def test_any_number_of_levels_resnets_and_attention_placement_round_trips(ch_mult, attn_resolutions, num_res_blocks):
    model = layout(ch_mult, attn_resolutions, num_res_blocks)
    original = to_original_state_dict(model)
    assert set(convert_state_dict(original, model)) == set(model)
    levels = len(ch_mult)
    # the original's decoder level 0 is the full resolution: diffusers' last up block
    assert convert_key("decoder.up.0.block.0.conv1.weight", levels) == \
        f"decoder.up_blocks.{levels - 1}.resnets.0.conv1.weight"
    attending = {256 // 2**level for level in range(levels)} & set(attn_resolutions)
    for level in range(levels):
        attends = 256 // 2**level in attending
        assert (f"encoder.down.{level}.attn.{num_res_blocks - 1}.q.weight" in original) == attends
        assert (f"decoder.up.{level}.attn.{num_res_blocks}.q.weight" in original) == attends


def test_a_decoder_level_beyond_the_model_fails_naming_the_key():
    model = layout([1, 2], [])
    original = {**to_original_state_dict(model), "decoder.up.2.block.0.conv1.bias": torch.empty(32, device="meta")}
    with pytest.raises(HarnessError, match=r"'decoder.up.2.block.0.conv1.bias' names decoder level 2; the model has 2"):
        convert_state_dict(original, model)


def test_the_102M_layout_has_four_encoder_and_five_decoder_resnets_per_level():
    names = set(to_original_state_dict(target("102M")))
    assert "encoder.down.0.block.3.conv1.weight" in names and "encoder.down.0.block.4.conv1.weight" not in names
    assert "decoder.up.3.block.4.conv1.weight" in names and "decoder.up.3.attn.4.q.weight" in names
    assert "decoder.up.0.block.5.conv1.weight" not in names and "encoder.down.3.attn.3.q.weight" in names


def test_checkpoint_files_are_read_flat_wrapped_or_as_safetensors(tmp_path):
    from safetensors.torch import save_file
    state = {"quant_conv.weight": torch.ones(4, 4, 1, 1), "quant_conv.bias": torch.zeros(4)}
    torch.save(state, tmp_path / "flat.ckpt")
    torch.save({"state_dict": state, "global_step": 3}, tmp_path / "wrapped.ckpt")
    save_file(state, str(tmp_path / "weights.safetensors"))
    for name in ("flat.ckpt", "wrapped.ckpt", "weights.safetensors"):
        read = read_checkpoint(tmp_path / name)
        assert set(read) == set(state) and torch.equal(read["quant_conv.weight"], state["quant_conv.weight"])


def test_an_unreadable_or_foreign_checkpoint_fails_naming_the_file(tmp_path):
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match=r"broken.ckpt could not be read"):
        read_checkpoint(tmp_path / "broken.ckpt")
    torch.save({"quant_conv.weight": torch.ones(1), "epoch": 3}, tmp_path / "mixed.ckpt")
    with pytest.raises(HarnessError, match=r"mixed.ckpt: entry 'epoch' is not a tensor"):
        read_checkpoint(tmp_path / "mixed.ckpt")
    with pytest.raises(HarnessError, match=r"absent.ckpt not found"):
        read_checkpoint(tmp_path / "absent.ckpt")
