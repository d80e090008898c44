"""The image tokenizer's paper-scale paths, run with tiny models of the same architecture: the
variant configs' sizes, loading a checkpoint in the original SBER-MoVQGAN format, and encode/decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import VQModel

from harness.data.image_tokenizer import (
    FP32, MOVQ_VARIANTS, ImageTokenizer, exact_fp32, nearest_codes, tiny_movq_config,
)
from harness.data.movq_convert import to_original_state_dict
from harness.errors import HarnessError

CODEBOOK = 64


def parameters(variant: str) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init
        return sum(p.numel() for p in VQModel(**MOVQ_VARIANTS[variant]).parameters())


@pytest.mark.parametrize("variant, count", [("67M", 67_832_495), ("270M", 270_669_103)])
def test_the_released_variants_have_the_released_parameter_counts(variant, count):
    assert parameters(variant) == count


def test_the_102M_config_is_the_67M_with_four_resnets_per_level():
    # No released key list to check against; the count follows from configs/movqgan_102M.yaml.
    assert MOVQ_VARIANTS["102M"] == {**MOVQ_VARIANTS["67M"], "layers_per_block": 4}
    assert parameters("102M") == 101_614_255


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
