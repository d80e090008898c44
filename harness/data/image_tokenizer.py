"""Image tokenizer: the SBER-MoVQGAN architecture through diffusers' VQModel(norm_type="spatial").

Paper scale loads the released weights (67M/102M/270M) with `ImageTokenizer.from_sber_checkpoint`;
smoke and micro scales build the same architecture, narrower, with seeded random weights. Such a
tokenizer is labelled "random weights" everywhere it is recorded: its codes are a deterministic
function of the image but not a good one. Both run the same decode code below.

Encoding follows the original MoVQGAN: encoder -> quant_conv -> nearest codebook entry by the
squared distance |z|^2 + |e|^2 - 2 z.e, ids flattened in (batch, row, column) order. Released
weights encode in fp32 (TF32 off), as the original does; a tokenizer the harness builds encodes
portably (harness/data/portable.py), because the datasets made with it are versioned and rebuilt
on any CPU. Decoding looks the ids up, reshapes (B, h, w, C) -> (B, C, h, w) and runs
`decoder(post_quant_conv(q), q)`: every decoder norm is a SpatialNorm conditioned on q itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from diffusers import VQModel

from harness.data import movq_convert, portable
from harness.errors import HarnessError

DOWNSAMPLING = 8  # 3 down blocks: 256x256 -> 32x32 codes
WEIGHTS_URL = "https://huggingface.co/ai-forever/MoVQGAN"

# Kandinsky 2.x movq == SBER-MoVQGAN 67M (FACTS.md): ddconfig ch 128, ch_mult [1,2,2,4],
# num_res_blocks 2, attn_resolutions [32] (= the last, 32x32 level), z_channels 4, embed_dim 4,
# n_embed 16384. diffusers' decoder gives each up block layers_per_block + 1 resnets, as the
# original's num_res_blocks + 1.
MOVQ_67M: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=16384,
    down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 256, 512), layers_per_block=2, norm_num_groups=32,
    norm_type="spatial",
)

MOVQ_VARIANTS: dict[str, dict[str, Any]] = {
    "67M": MOVQ_67M,  # 67,832,495 parameters, checked against the released key list
    # ai-forever/MoVQGAN configs/movqgan_102M.yaml (and movqgan/__init__.py MODELS["102M"]): the 67M
    # ddconfig with num_res_blocks 4 instead of 2; everything else (ch 128, ch_mult [1,2,2,4],
    # attn_resolutions [32], z_channels 4, embed_dim 4, n_embed 16384) is unchanged, so
    # layers_per_block=4 expresses it. No released key list was at hand to check it against.
    "102M": {**MOVQ_67M, "layers_per_block": 4},
    # 270M: ch 256 (every width doubled), num_res_blocks 2; 270,669,103 parameters, checked.
    "270M": {**MOVQ_67M, "block_out_channels": (256, 512, 512, 1024)},
}


def tiny_movq_config(codebook_size: int) -> dict[str, Any]:
    """The MoVQ layout at laptop width: same blocks, same downsampling, same code dimension.
    Widths stay multiples of 32: diffusers' SpatialNorm hard-codes 32 groups."""
    return {**MOVQ_67M, "num_vq_embeddings": codebook_size, "block_out_channels": (32, 32, 64, 64),
            "layers_per_block": 1}


def variant_config(variant: str) -> dict[str, Any]:
    if variant not in MOVQ_VARIANTS:
        raise HarnessError(f"unknown SBER-MoVQGAN variant '{variant}'; valid: {', '.join(MOVQ_VARIANTS)}")
    return MOVQ_VARIANTS[variant]


@contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for cuBLAS matmuls and cuDNN convolutions while encoding/decoding, restored after.
    cuDNN allows TF32 by default, which would move latents enough to flip near-tie codes."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def nearest_codes(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, h*w] ids of the nearest codebook rows, row-major.

    The distance is the original quantizer's |z|^2 + |e|^2 - 2 z.e, in fp32. The cross term is
    summed over the (tiny) code dimension elementwise, not by a matmul, so no TF32 or
    batch-size-dependent GEMM blocking can reach it; one image at a time bounds the
    [h*w, codebook] distance matrix (64 MB at 32x32 codes) and keeps each image's ids
    independent of the batch it came in."""
    batch, dim = latents.shape[:2]
    z = latents.float().permute(0, 2, 3, 1).reshape(batch, -1, dim)
    e = codebook.float()
    e_sq = e.pow(2).sum(1)
    ids = []
    for zi in z:
        cross = zi[:, :1] * e[:, 0]
        for k in range(1, dim):
            cross = cross + zi[:, k:k + 1] * e[:, k]
        distance = zi.pow(2).sum(1, keepdim=True) + e_sq - 2 * cross
        ids.append(distance.argmin(1))  # first index on ties, as torch documents
    return torch.stack(ids)


ENCODING_FILE = "encoding.json"
FP32 = "fp32 (TF32 off), as the original MoVQGAN"
PORTABLE_BATCH = 8  # ATen's float64 im2col convolution: 1.6x faster than at 128 on a 2-core CPU


class ImageTokenizer:
    def __init__(self, model: VQModel, weights: str, encoding: str = FP32) -> None:
        if model.config.get("lookup_from_codebook"):  # decode() hands VQModel latents, not ids
            raise HarnessError("image tokenizer: VQModel(lookup_from_codebook=True) is not supported")
        if encoding not in (FP32, portable.DESCRIPTION):
            raise HarnessError(f"image tokenizer: unknown encoding {encoding!r}")
        self.model = model.eval()
        self.weights = weights
        self.encoding = encoding
        self._encoder64: torch.nn.Module | None = None  # the float64 encoder of the portable path

    # ---- construction ----

    @classmethod
    def random(cls, config: dict[str, Any], seed: int, device: str | torch.device | None = None) -> "ImageTokenizer":
        with torch.random.fork_rng():  # VQModel's own init draws from torch's RNG; leave the caller's be
            model = VQModel(**config)
        portable.init_weights(model, seed)
        codebook = model.quantize.embedding.weight
        with torch.no_grad():
            codebook.copy_(torch.from_numpy(portable.from_grid(portable.to_grid(codebook, "codebook"))))
        tokenizer = cls(model, weights=f"random (seed {seed}; smoke only, not SBER-MoVQGAN weights)",
                        encoding=portable.DESCRIPTION)
        return tokenizer.to(device) if device is not None else tokenizer

    @classmethod
    def from_sber_checkpoint(cls, path: Path, variant: str,
                             device: str | torch.device | None = None) -> "ImageTokenizer":
        """The released SBER-MoVQGAN weights (movqgan_{67M,102M,270M}.ckpt, original key names) from
        a local file, converted to VQModel names and loaded strictly: every tensor must map onto
        the variant's model with the right shape, and every model tensor must be present."""
        config = variant_config(variant)
        path = Path(path)
        if not path.is_file():
            raise HarnessError(f"SBER-MoVQGAN {variant} checkpoint {path} not found; download "
                               f"movqgan_{variant}.ckpt from {WEIGHTS_URL} and point the config at it")
        original = movq_convert.read_checkpoint(path)
        with torch.device("meta"):  # no random init: every tensor is replaced by the checkpoint's
            model = VQModel(**config)
        converted = movq_convert.convert_state_dict(original, model.state_dict())
        # fp32 whatever the file stores: codes are chosen by fp32 distances (FACTS.md)
        converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
        model.load_state_dict(converted, strict=True, assign=True)
        left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise HarnessError(f"SBER-MoVQGAN checkpoint {path} left '{left[0]}' unset")
        tokenizer = cls(model, weights=f"SBER-MoVQGAN {variant} ({path.resolve()})")
        return tokenizer.to(device) if device is not None else tokenizer

    @classmethod
    def load(cls, directory: Path, weights: str, device: str | torch.device | None = None) -> "ImageTokenizer":
        """Load a saved tokenizer (diffusers layout: config.json + safetensors, and the encoding it
        was saved with) from a local directory."""
        encoding_file = Path(directory) / ENCODING_FILE
        encoding = json.loads(encoding_file.read_text())["encoding"] if encoding_file.exists() else FP32
        tokenizer = cls(VQModel.from_pretrained(str(directory), local_files_only=True), weights, encoding)
        return tokenizer.to(device) if device is not None else tokenizer

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory))
        (Path(directory) / ENCODING_FILE).write_text(json.dumps({"encoding": self.encoding}) + "\n")

    def to(self, device: str | torch.device) -> "ImageTokenizer":
        self.model.to(device)
        self._encoder64 = None
        return self

    # ---- facts ----

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokens_per_image(self, image_size: int) -> int:
        return (image_size // DOWNSAMPLING) ** 2

    @property
    def codebook_size(self) -> int:
        return self.model.config.num_vq_embeddings

    @property
    def codebook(self) -> torch.Tensor:
        return self.model.quantize.embedding.weight

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    # ---- smoke tokenizers: a codebook that covers the data ----

    @torch.no_grad()
    def fit_codebook(self, pixels: np.ndarray, seed: int, iterations: int = 10) -> None:
        """Replace the codebook by k-means centres (k-means++ seeding, Lloyd steps) of these
        images' encoder latents. A random codebook barely meets the latents of a random encoder
        (a few dozen codes in use, colours indistinct); fitted, the codes of a random-weight
        tokenizer tell colours and shapes apart, so smoke-scale image losses mean something.
        Portable tokenizers only: the fit is exact integer arithmetic on the latent grid."""
        if self.encoding != portable.DESCRIPTION:
            raise HarnessError("image tokenizer: fit_codebook needs the portable encoding")
        points = self._grid_latents(_to_unit_range(pixels)).reshape(-1, self.codebook.shape[1])
        centres = portable.kmeans(points, self.codebook_size, seed, iterations)
        self.codebook.copy_(torch.from_numpy(portable.from_grid(centres)).to(self.codebook))
        self.weights += f"; codebook fitted to the data's latents (exact k-means, seed {seed})"

    # ---- encode ----

    @torch.no_grad()
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Float RGB [B, 3, H, W] in [-1, 1] (H, W multiples of 8) -> long ids [B, (H/8) * (W/8)],
        row-major (batch, row, column), on the tokenizer's device."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % DOWNSAMPLING or x.shape[3] % DOWNSAMPLING:
            raise HarnessError(f"image tokenizer: expected [B, 3, H, W] with H, W multiples of "
                               f"{DOWNSAMPLING}, got {list(x.shape)}")
        if self.encoding == portable.DESCRIPTION:
            points = self._grid_latents(x)
            codes = portable.on_grid(self.codebook, "the codebook")
            ids = portable.nearest(points.reshape(-1, points.shape[-1]), codes)
            return torch.from_numpy(ids.reshape(points.shape[:2])).to(self.device)
        x = x.to(self.device, torch.float32)
        with exact_fp32(), torch.autocast(self.device.type, enabled=False):  # a caller's bf16 autocast too
            latents = self.model.encode(x).latents
            return nearest_codes(latents, self.codebook)

    def _grid_latents(self, x: torch.Tensor) -> np.ndarray:
        """The portable path: float64 encoder, latents as int64 [B, h*w, C] on the grid."""
        if self._encoder64 is None:
            self._encoder64 = copy.deepcopy(torch.nn.Sequential(self.model.encoder, self.model.quant_conv)).double()
        x = x.to(self.device, torch.float64)
        with torch.autocast(self.device.type, enabled=False):  # float64 convolutions run fastest in small batches
            latents = torch.cat([self._encoder64(chunk) for chunk in x.split(PORTABLE_BATCH)])
        return portable.to_grid(latents.permute(0, 2, 3, 1).flatten(1, 2), "a latent")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> code ids [B, (H/8) * (W/8)] (int64, CPU) in row-major order."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise HarnessError(f"image tokenizer: expected uint8 [B, H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
        return self.encode_tensor(_to_unit_range(pixels)).cpu().numpy()

    # ---- decode ----

    def quantized(self, ids: torch.Tensor, height_codes: int | None = None) -> torch.Tensor:
        """ids [B, h*w] -> the quantized latent [B, C, h, w]: lookup, (B, h, w, C) -> (B, C, h, w)."""
        ids = torch.as_tensor(ids).to(self.device, torch.long)
        if ids.ndim != 2:
            raise HarnessError(f"image tokenizer: expected ids [B, N], got {list(ids.shape)}")
        height, width = _grid(ids.shape[1], height_codes)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise HarnessError(f"image tokenizer: ids outside [0, {self.codebook_size}): "
                               f"min {int(ids.min())}, max {int(ids.max())}")
        q = self.codebook[ids].view(ids.shape[0], height, width, -1)
        return q.permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, height_codes: int | None = None) -> torch.Tensor:
        """ids [B, h*w] (row-major; square grid unless height_codes says h) -> float RGB
        [B, 3, 8h, 8w] clamped to [-1, 1]. VQModel.decode with force_not_quantize=True runs
        decoder(post_quant_conv(q), q), the SpatialNorms conditioned on q, as the original."""
        q = self.quantized(ids, height_codes)
        with exact_fp32(), torch.autocast(self.device.type, enabled=False):
            image = self.model.decode(q, force_not_quantize=True).sample
        return image.clamp(-1.0, 1.0)

    def decode_to_uint8(self, ids: torch.Tensor, height_codes: int | None = None) -> np.ndarray:
        """ids [B, h*w] -> uint8 [B, 8h, 8w, 3] on the CPU (the inverse of encode's scaling)."""
        image = (self.decode(ids, height_codes) + 1.0) * 127.5
        return image.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _grid(count: int, height: int | None) -> tuple[int, int]:
    """(h, w) of a row-major grid of `count` codes: square unless the height is given."""
    if height is None:
        height = math.isqrt(count)
        if height * height != count:
            raise HarnessError(f"image tokenizer: {count} ids are not a square grid; pass height_codes")
    if height <= 0 or count % height:
        raise HarnessError(f"image tokenizer: {count} ids do not fill rows of height_codes={height}")
    return height, count // height
