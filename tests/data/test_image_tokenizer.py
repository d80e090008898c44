"""The image tokenizer's paper-scale paths, run with tiny models of the same architecture: models
built from SBER-MoVQGAN ddconfigs (the released sizes, other layouts, configs VQModel cannot express),
loading a checkpoint in the original SBER-MoVQGAN format, and encode/decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import VQModel

from harness.data.image_tokenizer import (
    FP32, MOVQ_DDCONFIGS, MOVQ_VARIANTS, RELEASED_CODEBOOK, ImageTokenizer, exact_fp32, nearest_codes,
    params_config, tiny_movq_config, vqmodel_config,
)
from harness.data.movq_convert import to_original_state_dict
from harness.errors import HarnessError

CODEBOOK = 64


def parameters(config: dict) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init
        return sum(p.numel() for p in VQModel(**config).parameters())


@pytest.mark.parametrize("variant, count", [("67M", 67_832_495), ("270M", 270_669_103), ("102M", 101_614_255)])
def test_the_released_variants_built_from_their_ddconfigs_have_the_released_parameter_counts(variant, count):
    # 67M and 270M are checked against the released key lists; 102M follows from configs/movqgan_102M.yaml
    assert parameters(vqmodel_config(MOVQ_DDCONFIGS[variant], **RELEASED_CODEBOOK)) == count
    assert MOVQ_VARIANTS[variant] == vqmodel_config(MOVQ_DDCONFIGS[variant], **RELEASED_CODEBOOK)


# The VQModel kwargs the harness used before they were derived from ddconfigs.
MOVQ_67M = dict(
    in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=16384,
    down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 256, 512), layers_per_block=2, norm_num_groups=32, norm_type="spatial",
)


def test_the_ddconfigs_give_exactly_the_configs_used_before():
    # attn_resolutions [32] at resolution 256: levels 256, 128, 64, 32, so the last level attends
    assert MOVQ_VARIANTS["67M"] == MOVQ_67M
    assert MOVQ_VARIANTS["102M"] == {**MOVQ_67M, "layers_per_block": 4}
    assert MOVQ_VARIANTS["270M"] == {**MOVQ_67M, "block_out_channels": (256, 512, 512, 1024)}
    assert tiny_movq_config(CODEBOOK) == {**MOVQ_67M, "num_vq_embeddings": CODEBOOK,
                                          "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1}


@pytest.fixture
def source() -> ImageTokenizer:
    return ImageTokenizer.random(tiny_movq_config(CODEBOOK), seed=3)


@pytest.fixture
def tiny_variant(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered variant with the tiny layout, so from_sber_checkpoint runs its real path."""
    monkeypatch.setitem(MOVQ_VARIANTS, "tiny", tiny_movq_config(CODEBOOK))
    return "tiny"


def images(batch: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


def sber_checkpoint(tokenizer: ImageTokenizer, path: Path, wrapped: bool = False) -> Path:
    """The tokenizer's weights written as the released files are: original key names, 1x1-conv attention."""
    state = to_original_state_dict(tokenizer.model.state_dict())
    torch.save({"state_dict": state} if wrapped else state, path)
    return path


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_checkpoint_in_the_original_format_loads_and_encodes_bitwise_identically(
        source, tiny_variant, tmp_path, wrapped):
    path = sber_checkpoint(source, tmp_path / "movqgan_tiny.ckpt", wrapped)
    loaded = ImageTokenizer.from_sber_checkpoint(path, tiny_variant)
    assert loaded.fingerprint() == source.fingerprint()
    assert loaded.encoding == FP32  # released weights encode as the original does
    x = images(3)
    assert torch.equal(loaded.encode_tensor(x), ImageTokenizer(source.model, source.weights).encode_tensor(x))
    ids = source.encode_tensor(x)
    assert torch.equal(loaded.decode(ids), source.decode(ids))
    assert "tiny" in loaded.weights and str(path.resolve()) in loaded.weights and "random" not in loaded.weights


def test_a_missing_file_or_unknown_variant_says_what_to_do(tmp_path):
    hint = r"absent.ckpt not found; download movqgan_67M.ckpt from .*ai-forever/MoVQGAN"
    with pytest.raises(HarnessError, match=hint):
        ImageTokenizer.from_sber_checkpoint(tmp_path / "absent.ckpt", "67M")
    with pytest.raises(HarnessError, match=r"unknown SBER-MoVQGAN variant '1B'; valid: 67M, 102M, 270M"):
        ImageTokenizer.from_sber_checkpoint(tmp_path / "absent.ckpt", "1B")


def test_a_misshaped_missing_or_unexpected_tensor_fails_naming_its_key(source, tiny_variant, tmp_path):
    state = to_original_state_dict(source.model.state_dict())
    cases = {
        "misshaped": ({**state, "decoder.conv_out.bias": torch.zeros(5)}, r"'decoder.conv_out.bias': shape \(5,\)"),
        "missing": ({k: v for k, v in state.items() if k != "encoder.mid.attn_1.q.weight"},
                    r"lacks 1 tensor.*'encoder.mid.attn_1.q.weight'"),
        "unexpected": ({**state, "loss.discriminator.main.0.weight": torch.zeros(1)},
                       r"no rule maps key 'loss.discriminator.main.0.weight'"),
    }
    for name, (bad, message) in cases.items():
        torch.save(bad, tmp_path / f"{name}.ckpt")
        with pytest.raises(HarnessError, match=message):
            ImageTokenizer.from_sber_checkpoint(tmp_path / f"{name}.ckpt", tiny_variant)


def test_encode_and_decode_a_batch_of_three(source):
    x = images(3)
    ids = source.encode_tensor(x)
    assert ids.dtype == torch.long and ids.shape == (3, 16)
    assert int(ids.min()) >= 0 and int(ids.max()) < CODEBOOK
    decoded = source.decode(ids)
    assert decoded.shape == x.shape and decoded.dtype == torch.float32
    assert float(decoded.abs().max()) <= 1.0
    pixels = source.decode_to_uint8(ids)
    assert pixels.shape == (3, 32, 32, 3) and pixels.dtype == np.uint8


def test_decode_is_the_decoder_conditioned_on_the_quantized_latent(source):
    ids = source.encode_tensor(images(2))
    q = source.codebook[ids].view(2, 4, 4, -1).permute(0, 3, 1, 2).contiguous()  # (B, h, w, C) -> (B, C, h, w)
    with torch.no_grad():
        expected = source.model.decoder(source.model.post_quant_conv(q), q).clamp(-1, 1)
    assert torch.equal(source.decode(ids), expected)


def test_ids_are_row_major_and_non_square_grids_need_their_height(source):
    x = images(2, height=48, width=64)
    ids = source.encode_tensor(x)
    assert ids.shape == (2, 6 * 8)
    with torch.no_grad():
        latents = source.model.encode(x).latents
    manual = nearest_codes(latents, source.codebook)
    assert torch.equal(ids, manual)
    assert torch.equal(ids.view(2, 6, 8)[:, 1, 2], nearest_codes(latents[:, :, 1:2, 2:3], source.codebook)[:, 0])
    assert source.decode(ids, height_codes=6).shape == (2, 3, 48, 64)
    with pytest.raises(HarnessError, match="not a square grid; pass height_codes"):
        source.decode(ids)
    with pytest.raises(HarnessError, match=r"ids outside \[0, 64\)"):
        source.decode(torch.full((1, 16), CODEBOOK))


def test_codes_are_the_nearest_codebook_rows(source):
    with torch.no_grad():
        latents = source.model.encode(images(2)).latents
    z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    exact = torch.cdist(z, source.codebook.double()).argmin(1).view(2, -1)
    assert torch.equal(nearest_codes(latents, source.codebook), exact)
    _, _, (_, _, diffusers_ids) = source.model.quantize(latents)
    assert torch.equal(diffusers_ids.view(2, -1), exact)


def test_an_image_encodes_the_same_whatever_batch_it_is_in(source):
    x = images(4, seed=1)
    together = source.encode_tensor(x)
    for i in range(4):
        assert torch.equal(source.encode_tensor(x[i:i + 1])[0], together[i])
    assert torch.equal(source.encode_tensor(x.flip(0)), together.flip(0))


def test_uint8_encode_is_encode_tensor_of_the_scaled_pixels(source):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.array_equal(source.encode(pixels), source.encode_tensor(x).numpy())
    with pytest.raises(HarnessError, match=r"expected \[B, 3, H, W\] with H, W multiples of 8"):
        source.encode_tensor(images(1, height=30))


def test_encoding_leaves_the_callers_precision_flags_as_they_were(source):
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with exact_fp32():
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    source.encode_tensor(images(1))
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_the_tokenizer_moves_to_a_device(source):
    assert source.to("cpu") is source and source.device == torch.device("cpu")
    assert ImageTokenizer.random(tiny_movq_config(CODEBOOK), seed=3, device="cpu").fingerprint() == source.fingerprint()


# ---- a layout other than the released ones, from its own config ----

ODD_DDCONFIG = dict(double_z=False, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1, 2, 1, 1], num_res_blocks=1, attn_resolutions=[64], dropout=0.0)
ODD_PARAMS = {"ddconfig": ODD_DDCONFIG, "embed_dim": 4, "n_embed": 24}


def test_a_nonstandard_ddconfig_builds_the_layout_it_describes():
    config = params_config(ODD_PARAMS)
    assert config["block_out_channels"] == (32, 64, 32, 32) and config["layers_per_block"] == 1
    # resolution 256 halves to 64 at level 2: attention there, mirrored in the decoder's up blocks
    assert config["down_block_types"] == ("DownEncoderBlock2D",) * 2 + ("AttnDownEncoderBlock2D", "DownEncoderBlock2D")
    assert config["up_block_types"] == ("UpDecoderBlock2D", "AttnUpDecoderBlock2D") + ("UpDecoderBlock2D",) * 2
    assert config["num_vq_embeddings"] == 24


@pytest.mark.parametrize("architecture", ["params", "yaml"])
def test_a_nonstandard_checkpoint_round_trips_with_its_own_config_and_encodes_deterministically(
        tmp_path, architecture):
    source = ImageTokenizer.random(params_config(ODD_PARAMS), seed=5)
    state = to_original_state_dict(source.model.state_dict())
    assert "encoder.down.2.attn.0.q.weight" in state and "decoder.up.2.attn.1.q.weight" in state
    assert not any(".attn." in key for key in state if ".down.3." in key or ".up.3." in key)
    path = tmp_path / "movq_odd.ckpt"
    torch.save({"state_dict": state}, path)
    if architecture == "yaml":  # the original's own config file layout: model.target, model.params
        spec = tmp_path / "movq_odd.yaml"
        spec.write_text(yaml.safe_dump({"model": {"target": "movqgan.models.vqgan.MOVQ", "params": {
            **ODD_PARAMS, "learning_rate": 1e-4, "lossconfig": {"target": "ignored"}}}}))
    else:
        spec = ODD_PARAMS
    loaded = ImageTokenizer.from_sber_checkpoint(path, spec)
    assert loaded.fingerprint() == source.fingerprint() and loaded.encoding == FP32
    x = images(2)
    ids = loaded.encode_tensor(x)
    assert torch.equal(ids, loaded.encode_tensor(x))
    assert torch.equal(ids, ImageTokenizer(source.model, source.weights).encode_tensor(x))  # the source, in fp32
    assert int(ids.max()) < 24 and torch.equal(loaded.decode(ids), source.decode(ids))
    assert str(path.resolve()) in loaded.weights


def test_the_downsampling_follows_the_number_of_levels():
    config = vqmodel_config({**ODD_DDCONFIG, "ch_mult": [1, 2, 2], "attn_resolutions": []}, 4, 16)
    tokenizer = ImageTokenizer.random(config, seed=0)
    assert tokenizer.downsampling == 4 and tokenizer.tokens_per_image(32) == 64
    assert tokenizer.encode_tensor(images(1, 16, 12)).shape == (1, 4 * 3)
    assert ImageTokenizer.random(tiny_movq_config(CODEBOOK), seed=0).downsampling == 8


def odd(drop: str = "", **changes) -> dict:
    """ODD_PARAMS with ddconfig entries changed (or `drop` removed); embed_dim/n_embed change at the top."""
    top = {key: changes.pop(key) for key in ("embed_dim", "n_embed") if key in changes}
    ddconfig = {key: value for key, value in {**ODD_DDCONFIG, **changes}.items() if key != drop}
    return {**ODD_PARAMS, "ddconfig": ddconfig, **top}


@pytest.mark.parametrize("params, key", [
    (odd(double_z=True), "double_z"),
    (odd(ch=48), "ch"),
    (odd(ch_mult=[2, 2, 4]), "ch_mult"),
    (odd(drop="ch_mult"), "ch_mult"),
    (odd(num_res_blocks=0), "num_res_blocks"),
    (odd(add_conv=True), "add_conv"),
    (odd(num_res_block=2), "num_res_block"),
    # 100 halves to 100, 50, 25, 12 in the encoder; the decoder doubles 12, 24, 48, 96: 25 attends in one only
    (odd(resolution=100, attn_resolutions=[25]), "resolution"),
    (odd(embed_dim=8), "embed_dim"),
    (odd(n_embed="many"), "n_embed"),
])
def test_a_ddconfig_diffusers_cannot_express_fails_naming_the_key(params, key):
    with pytest.raises(HarnessError, match=f"'{key}'"):
        params_config(params)


def test_an_original_config_of_another_model_or_without_params_fails(tmp_path):
    (tmp_path / "vq.yaml").write_text(yaml.safe_dump({"model": {"target": "movqgan.models.vqgan.VQModel",
                                                                "params": ODD_PARAMS}}))
    with pytest.raises(HarnessError, match=r"'model.target' movqgan.models.vqgan.VQModel is not a MOVQ model"):
        ImageTokenizer.from_sber_checkpoint(tmp_path / "absent.ckpt", tmp_path / "vq.yaml")
    (tmp_path / "empty.yaml").write_text("model: {}\n")
    with pytest.raises(HarnessError, match=r"no 'model.params' mapping"):
        ImageTokenizer.from_sber_checkpoint(tmp_path / "absent.ckpt", str(tmp_path / "empty.yaml"))
    with pytest.raises(HarnessError, match=r"model.params 'n_embed' is missing"):
        ImageTokenizer.from_sber_checkpoint(tmp_path / "absent.ckpt", {"ddconfig": ODD_DDCONFIG, "embed_dim": 4})
