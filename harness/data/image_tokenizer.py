"""Image tokenizer: the SBER-MoVQGAN architecture through diffusers' VQModel(norm_type="spatial").

Paper scale loads the released weights (67M/102M/270M), or any MoVQ checkpoint with its original
config, with `ImageTokenizer.from_sber_checkpoint`; the model is built from the config's ddconfig
(`vqmodel_config`). Smoke and micro scales build the same architecture, narrower, with seeded
random weights. Such a tokenizer is labelled "random weights" everywhere it is recorded: its codes
are a deterministic function of the image but not a good one. Both run the same decode code below.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from diffusers import VQModel

from harness.data import movq_convert, portable
from harness.errors import HarnessError

WEIGHTS_URL = "https://huggingface.co/ai-forever/MoVQGAN"

# ---- the architecture: an SBER-MoVQGAN config -> diffusers VQModel kwargs ----
#
# The original builds MOVQ(ddconfig, n_embed, embed_dim) (movqgan/models/vqgan.py): an Encoder and a
# MOVQDecoder from `ddconfig`, a codebook of n_embed rows of embed_dim. `vqmodel_config` builds the
# same model as diffusers' VQModel kwargs, so any MoVQ checkpoint loads with its own config.

# configs/movqgan_67M.yaml model.params.ddconfig; Kandinsky 2.x movq == SBER-MoVQGAN 67M (FACTS.md).
_DDCONFIG_67M: dict[str, Any] = dict(
    double_z=False, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 4],
    num_res_blocks=2, attn_resolutions=[32], dropout=0.0,
)
MOVQ_DDCONFIGS: dict[str, dict[str, Any]] = {
    "67M": _DDCONFIG_67M,  # 67,832,495 parameters, checked against the released key list
    # configs/movqgan_102M.yaml: four resnets per level. No released key list was at hand to check it.
    "102M": {**_DDCONFIG_67M, "num_res_blocks": 4},
    "270M": {**_DDCONFIG_67M, "ch": 256},  # 270,669,103 parameters, checked against the released key list
}
RELEASED_CODEBOOK: dict[str, int] = {"embed_dim": 4, "n_embed": 16384}  # all three configs' model.params

# The laptop-width layout of smoke and micro scales: the released blocks, downsampling and code
# dimension, narrower (widths stay multiples of 32, see GROUPS).
TINY_DDCONFIG: dict[str, Any] = {**_DDCONFIG_67M, "ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1}

GROUPS = 32  # the original's Normalize and diffusers' SpatialNorm both hard-code 32 groups
_REQUIRED = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
             "attn_resolutions")
# ddconfig keys the original reads with a default: (its default, the one value VQModel builds, why).
_FIXED: dict[str, tuple[bool, bool, str]] = {
    "double_z": (True, False, "VQModel's encoder emits z_channels, not 2 * z_channels"),
    "resamp_with_conv": (True, True, "VQModel resamples with convolutions"),
    "add_conv": (False, False, "VQModel's SpatialNorm has no 3x3 conv on the code"),
    "give_pre_end": (False, False, "VQModel's decoder always ends in norm_out and conv_out"),
}
_IGNORED = ("dropout",)  # acts only in training: the tokenizer runs in eval mode


def vqmodel_config(ddconfig: Mapping[str, Any], embed_dim: int, n_embed: int) -> dict[str, Any]:
    """diffusers VQModel kwargs for the model the original MOVQ(ddconfig, n_embed, embed_dim) builds.
    A config VQModel cannot express fails naming the key."""
    _check_keys(ddconfig)
    widths = _widths(ddconfig)
    z_channels = _positive_int(ddconfig["z_channels"], "z_channels")
    # VQModel sizes its decoder's SpatialNorms for z_channels-wide conditioning but feeds them the codes
    if _positive_int(embed_dim, "embed_dim") != z_channels:
        raise HarnessError(f"MoVQGAN config: 'embed_dim' {embed_dim} differs from ddconfig 'z_channels' "
                           f"{z_channels}; diffusers' VQModel needs them equal")
    attention = _attention_levels(ddconfig, len(widths))
    return dict(
        in_channels=_positive_int(ddconfig["in_channels"], "in_channels"),
        out_channels=_positive_int(ddconfig["out_ch"], "out_ch"),
        latent_channels=z_channels, vq_embed_dim=embed_dim, num_vq_embeddings=_positive_int(n_embed, "n_embed"),
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention),
        # diffusers' up blocks run from the lowest resolution up
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)),
        block_out_channels=widths,
        # diffusers' decoder gives each up block layers_per_block + 1 resnets, as the original's num_res_blocks + 1
        layers_per_block=_positive_int(ddconfig["num_res_blocks"], "num_res_blocks"),
        norm_num_groups=GROUPS, norm_type="spatial",
    )


def _check_keys(ddconfig: Mapping[str, Any]) -> None:
    if not isinstance(ddconfig, Mapping):
        raise HarnessError(f"MoVQGAN config: 'ddconfig' must be a mapping, not {type(ddconfig).__name__}")
    missing = [key for key in _REQUIRED if key not in ddconfig]
    if missing:
        raise HarnessError(f"MoVQGAN ddconfig: '{missing[0]}' is missing")
    # The original ignores keys it does not read; here an unknown key fails, as it may mean another
    # architecture than the one built here (or a typo of a key that matters).
    unknown = sorted(set(ddconfig) - {*_REQUIRED, *_FIXED, *_IGNORED})
    if unknown:
        raise HarnessError(f"MoVQGAN ddconfig: unknown key '{unknown[0]}'")
    for key, (default, supported, why) in _FIXED.items():
        if bool(ddconfig.get(key, default)) != supported:  # truthiness, as the original tests it
            got = repr(ddconfig[key]) if key in ddconfig else f"unset, which the original reads as {default}"
            raise HarnessError(f"MoVQGAN ddconfig: '{key}' must be {str(supported).lower()} ({why}); got {got}")


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HarnessError(f"MoVQGAN config: '{key}' must be a positive integer, got {value!r}")
    return value


def _widths(ddconfig: Mapping[str, Any]) -> tuple[int, ...]:
    """block_out_channels: ch * m per level, checked against what VQModel can build."""
    ch, ch_mult = _positive_int(ddconfig["ch"], "ch"), ddconfig["ch_mult"]
    if not isinstance(ch_mult, (list, tuple)) or not ch_mult or \
            not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ch_mult):
        raise HarnessError(f"MoVQGAN ddconfig: 'ch_mult' must be a non-empty list of positive integers, "
                           f"got {ch_mult!r}")
    # The original's conv_in emits ch channels and level 0 widens them to ch * ch_mult[0];
    # VQModel's conv_in emits level 0's width itself
    if ch_mult[0] != 1:
        raise HarnessError(f"MoVQGAN ddconfig: 'ch_mult' must start with 1 for diffusers' VQModel, "
                           f"got {list(ch_mult)}")
    if ch % GROUPS:  # with ch_mult integers, every width is then a multiple too
        raise HarnessError(f"MoVQGAN ddconfig: 'ch' {ch} is not a multiple of {GROUPS} "
                           f"(every norm has {GROUPS} groups)")
    return tuple(ch * m for m in ch_mult)


def _attention_levels(ddconfig: Mapping[str, Any], levels: int) -> list[bool]:
    """Whether each level (0 = full resolution) attends after each resnet. The original tests
    `resolution in attn_resolutions` per level, halving down from `resolution` in the encoder and
    doubling up from the bottom in the decoder; an entry no level has is ignored, as there. VQModel
    mirrors one placement in both, so the encoder's and the decoder's must agree."""
    resolution, wanted = _positive_int(ddconfig["resolution"], "resolution"), ddconfig["attn_resolutions"]
    if not isinstance(wanted, (list, tuple)) or not all(isinstance(r, int) for r in wanted):
        raise HarnessError(f"MoVQGAN ddconfig: 'attn_resolutions' must be a list of integers, got {wanted!r}")
    encoder = [resolution // 2**i in wanted for i in range(levels)]
    decoder = [resolution // 2**(levels - 1) * 2**(levels - 1 - i) in wanted for i in range(levels)]
    if encoder != decoder:
        raise HarnessError(f"MoVQGAN ddconfig: 'resolution' {resolution} is not divisible by "
                           f"{2**(levels - 1)}, so the original's encoder and decoder attend at different "
                           f"levels for 'attn_resolutions' {list(wanted)}; diffusers' VQModel cannot")
    return encoder


def params_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """VQModel kwargs from an original config's model.params: {"ddconfig": {...}, "embed_dim": 4,
    "n_embed": 16384}; its training entries (learning_rate, lossconfig, ...) are ignored."""
    if not isinstance(params, Mapping):
        raise HarnessError(f"MoVQGAN config: model.params must be a mapping, not {type(params).__name__}")
    for key in ("ddconfig", "embed_dim", "n_embed"):
        if key not in params:
            raise HarnessError(f"MoVQGAN config: model.params '{key}' is missing")
    return vqmodel_config(params["ddconfig"], params["embed_dim"], params["n_embed"])


def read_movq_yaml(path: Path) -> dict[str, Any]:
    """model.params of an original MoVQGAN training config (configs/movqgan_*.yaml)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"MoVQGAN config {path} could not be read: {reason}") from error
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise HarnessError(f"MoVQGAN config {path}: no 'model.params' mapping")
    # movqgan.models.vqgan.VQModel has a plain decoder (GroupNorms, no SpatialNorm): another model
    target = model.get("target", "movqgan.models.vqgan.MOVQ")
    if not str(target).endswith(".MOVQ"):
        raise HarnessError(f"MoVQGAN config {path}: 'model.target' {target} is not a MOVQ model")
    return model["params"]


MOVQ_VARIANTS: dict[str, dict[str, Any]] = {
    name: vqmodel_config(ddconfig, **RELEASED_CODEBOOK) for name, ddconfig in MOVQ_DDCONFIGS.items()
}


def tiny_movq_config(codebook_size: int) -> dict[str, Any]:
    """The MoVQ layout at laptop width (TINY_DDCONFIG) with a codebook of this size."""
    return vqmodel_config(TINY_DDCONFIG, embed_dim=RELEASED_CODEBOOK["embed_dim"], n_embed=codebook_size)


def variant_config(variant: str) -> dict[str, Any]:
    if variant not in MOVQ_VARIANTS:
        raise HarnessError(f"unknown SBER-MoVQGAN variant '{variant}'; valid: {', '.join(MOVQ_VARIANTS)}")
    return MOVQ_VARIANTS[variant]


# A released variant's name ("67M"), an original config file (a Path, or a str ending in .yaml/.yml),
# or that file's model.params as a mapping.
Architecture = str | Path | Mapping[str, Any]


def resolve_architecture(architecture: Architecture) -> tuple[str, dict[str, Any]]:
    """(a label for the weights description, VQModel kwargs) of an architecture."""
    if isinstance(architecture, Mapping):
        return f"model.params {_describe(architecture)}", params_config(architecture)
    if isinstance(architecture, Path) or str(architecture).endswith((".yaml", ".yml")):
        path = Path(architecture)
        return f"config {path.resolve()}", params_config(read_movq_yaml(path))
    return architecture, variant_config(architecture)


def _describe(params: Mapping[str, Any]) -> str:
    """The architecture's entries as compact JSON: what a recorded weights line needs to rebuild it."""
    kept = {key: params[key] for key in ("ddconfig", "embed_dim", "n_embed") if key in params}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


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
PORTABLE_BATCH = 8  # float64 (im2col) convolutions run fastest in small batches: 1.6x faster than 128 on 2 cores


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
        self.near_boundary = 0  # portable latents encoded so far within portable.NEAR of a rounding boundary

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
    def from_sber_checkpoint(cls, path: Path, architecture: Architecture,
                             device: str | torch.device | None = None) -> "ImageTokenizer":
        """SBER-MoVQGAN weights (original key names: the released movqgan_{67M,102M,270M}.ckpt or any
        MoVQ checkpoint) from a local file, for `architecture` (see Architecture), converted to VQModel
        names and loaded strictly: every tensor must map onto the model with the right shape, and every
        model tensor must be present."""
        label, config = resolve_architecture(architecture)
        path = Path(path)
        if not path.is_file():
            released = isinstance(architecture, str) and architecture in MOVQ_VARIANTS
            hint = (f"download movqgan_{architecture}.ckpt from {WEIGHTS_URL} and point the config at it"
                    if released else "point the config at the checkpoint file")
            raise HarnessError(f"SBER-MoVQGAN {label} checkpoint {path} not found; {hint}")
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
        tokenizer = cls(model, weights=f"SBER-MoVQGAN {label} ({path.resolve()})")
        return tokenizer.to(device) if device is not None else tokenizer

    @classmethod
    def load(cls, directory: Path, weights: str, device: str | torch.device | None = None) -> "ImageTokenizer":
        """Load a saved tokenizer (diffusers layout: config.json + safetensors, and the encoding it
        was saved with) from a local directory."""
        encoding_file = Path(directory) / ENCODING_FILE
        try:  # saved by this harness beside every tokenizer it writes; absent: a diffusers directory
            encoding = json.loads(encoding_file.read_text())["encoding"] if encoding_file.exists() else FP32
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HarnessError(f"{encoding_file} is unreadable ({type(exc).__name__}): restore the dataset "
                               "(dvc pull, or delete a synthetic one to rebuild it)") from None
        tokenizer = cls(VQModel.from_pretrained(str(directory), local_files_only=True, low_cpu_mem_usage=False), weights, encoding)
        return tokenizer.to(device) if device is not None else tokenizer

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory))
        # diffusers records the directory a model was loaded from: a checkout's own path, which
        # would make a dataset's bytes depend on where it was built
        config_file = Path(directory) / "config.json"
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (Path(directory) / ENCODING_FILE).write_text(json.dumps({"encoding": self.encoding}) + "\n")

    def to(self, device: str | torch.device) -> "ImageTokenizer":
        self.model.to(device)
        self._encoder64 = None
        return self

    # ---- facts ----

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def downsampling(self) -> int:
        """Pixels per code along each side: every level but the last halves the resolution."""
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def tokens_per_image(self, image_size: int) -> int:
        return (image_size // self.downsampling) ** 2

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
        points = self._grid_latents(to_unit_range(pixels)).reshape(-1, self.codebook.shape[1])
        centres = portable.kmeans(points, self.codebook_size, seed, iterations)
        self.codebook.copy_(torch.from_numpy(portable.from_grid(centres)).to(self.codebook))
        self.weights += f"; codebook fitted to the data's latents (exact k-means, seed {seed})"

    # ---- encode ----

    @torch.no_grad()
    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Float RGB [B, 3, H, W] in [-1, 1] (H, W multiples of f = self.downsampling, 8 in every
        released size) -> long ids [B, (H/f) * (W/f)], row-major (batch, row, column), on the
        tokenizer's device."""
        f = self.downsampling
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % f or x.shape[3] % f:
            raise HarnessError(f"image tokenizer: expected [B, 3, H, W] with H, W multiples of {f}, "
                               f"got {list(x.shape)}")
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
        with torch.autocast(self.device.type, enabled=False):
            latents = torch.cat([self._encoder64(chunk) for chunk in x.split(PORTABLE_BATCH)])
        self.near_boundary += portable.near_boundaries(latents)
        return portable.to_grid(latents.permute(0, 2, 3, 1).flatten(1, 2), "a latent")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> code ids [B, (H/f) * (W/f)] (int64, CPU) in row-major order."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise HarnessError(f"image tokenizer: expected uint8 [B, H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
        return self.encode_tensor(to_unit_range(pixels)).cpu().numpy()

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
        [B, 3, f*h, f*w] clamped to [-1, 1] (f = self.downsampling). VQModel.decode with
        force_not_quantize=True runs decoder(post_quant_conv(q), q), the SpatialNorms conditioned on
        q, as the original."""
        q = self.quantized(ids, height_codes)
        with exact_fp32(), torch.autocast(self.device.type, enabled=False):
            image = self.model.decode(q, force_not_quantize=True).sample
        return image.clamp(-1.0, 1.0)

    def decode_to_uint8(self, ids: torch.Tensor, height_codes: int | None = None) -> np.ndarray:
        """ids [B, h*w] -> uint8 [B, f*h, f*w, 3] on the CPU (the inverse of encode's scaling)."""
        image = (self.decode(ids, height_codes) + 1.0) * 127.5
        return image.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_unit_range(pixels: np.ndarray) -> torch.Tensor:
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
