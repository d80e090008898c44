"""Image tokenizer: the SBER-MoVQGAN architecture through diffusers' VQModel(norm_type="spatial").

Paper scale loads the released weights (67M/102M/270M); smoke and micro scales build the same
architecture, narrower, with seeded random weights. Such a tokenizer is labelled "random weights"
everywhere it is recorded: its codes are a deterministic function of the image but not a good one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import VQModel

DOWNSAMPLING = 8  # 3 down blocks: 256x256 -> 32x32 codes

# Kandinsky 2.x movq == SBER-MoVQGAN 67M (FACTS.md); 270M widens block_out_channels.
MOVQ_67M: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=16384,
    down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 256, 512), layers_per_block=2, norm_num_groups=32,
    norm_type="spatial",
)


def tiny_movq_config(codebook_size: int) -> dict[str, Any]:
    """The MoVQ layout at laptop width: same blocks, same downsampling, same code dimension.
    Widths stay multiples of 32: diffusers' SpatialNorm hard-codes 32 groups."""
    return {**MOVQ_67M, "num_vq_embeddings": codebook_size, "block_out_channels": (32, 32, 64, 64),
            "layers_per_block": 1}


class ImageTokenizer:
    def __init__(self, model: VQModel, weights: str) -> None:
        self.model = model.eval()
        self.weights = weights

    @classmethod
    def random(cls, config: dict[str, Any], seed: int) -> "ImageTokenizer":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = VQModel(**config)
        return cls(model, weights=f"random (seed {seed}; smoke only, not SBER-MoVQGAN weights)")

    @classmethod
    def load(cls, directory: Path, weights: str) -> "ImageTokenizer":
        """Load a saved tokenizer (diffusers layout: config.json + safetensors) from a local directory."""
        return cls(VQModel.from_pretrained(str(directory), local_files_only=True), weights)

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory))

    def tokens_per_image(self, image_size: int) -> int:
        return (image_size // DOWNSAMPLING) ** 2

    @property
    def codebook_size(self) -> int:
        return self.model.config.num_vq_embeddings

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] -> code ids [B, (H/8) * (W/8)] in row-major order."""
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = self.model.encode(x).latents
        _, _, (_, _, indices) = self.model.quantize(latents.float())
        return indices.reshape(x.shape[0], -1).numpy()
