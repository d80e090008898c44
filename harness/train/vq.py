"""Training a MoVQ autoencoder (diffusers VQModel, norm_type="spatial") as a VQ-VAE: the pieces
the train_tokenizer job (harness/train/tokenizer.py) puts together.

The codebook learns by exponential moving averages of the latents assigned to each code (the
k-means-like update of VQ-VAE-2 and SoundStream), not by gradients, and a code no latent chose for
a while is restarted at a latent of the current batch: small codebooks otherwise collapse to a few
dozen codes. The encoder learns through the straight-through estimator plus the commitment loss
(beta |z - sg(q)|^2); the decoder sees the quantized latent twice, as its input and as the
condition of every SpatialNorm, exactly as it will when it decodes generated codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import VQModel


class EmaCodebook:
    """The codebook rows of a VQModel, updated by EMA of their assigned latents."""

    def __init__(self, weight: torch.Tensor, decay: float, restart_after: int, generator: torch.Generator) -> None:
        self.weight = weight                      # the model's codebook (updated in place)
        self.decay = decay
        self.restart_after = restart_after        # steps unused before a code restarts
        self.generator = generator
        k = weight.shape[0]
        self.cluster_size = torch.zeros(k)
        self.embed_sum = weight.detach().clone()
        self.idle_steps = torch.zeros(k, dtype=torch.long)
        self.restarts = 0

    def state_dict(self) -> dict:
        return {"cluster_size": self.cluster_size, "embed_sum": self.embed_sum, "idle_steps": self.idle_steps,
                "restarts": self.restarts}

    def load_state_dict(self, state: dict) -> None:
        self.cluster_size, self.embed_sum = state["cluster_size"], state["embed_sum"]
        self.idle_steps, self.restarts = state["idle_steps"], int(state["restarts"])

    @torch.no_grad()
    def seed_from(self, points: torch.Tensor) -> None:
        """Start the codes at the latents of a first batch, in a seeded order. A batch with fewer
        latents than codes starts the rest as copies; a copy never wins a tie (the lowest id
        does), so it waits `restart_after` steps and is then restarted at a latent of its own."""
        chosen = torch.randperm(len(points), generator=self.generator)[: self.weight.shape[0]]
        rows = points[chosen.repeat(-(-self.weight.shape[0] // len(chosen)))[: self.weight.shape[0]]]
        self.weight.copy_(rows)
        self.embed_sum.copy_(rows)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def assign(self, points: torch.Tensor) -> torch.Tensor:
        """[N, d] -> [N] nearest code ids."""
        return torch.cdist(points, self.weight.detach()).argmin(1)

    @torch.no_grad()
    def update(self, points: torch.Tensor, ids: torch.Tensor) -> None:
        k = self.weight.shape[0]
        counts = torch.bincount(ids, minlength=k).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, points)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n
        self.weight.copy_(self.embed_sum / smoothed[:, None])
        self.idle_steps = torch.where(counts > 0, torch.zeros_like(self.idle_steps), self.idle_steps + 1)
        self._restart_dead(points)

    def _restart_dead(self, points: torch.Tensor) -> None:
        """Each code idle for `restart_after` steps moves to a latent of this batch drawn uniformly
        (with replacement: two may land on one latent and then part as they are chosen)."""
        dead = (self.idle_steps >= self.restart_after).nonzero().flatten()
        if not len(dead):
            return
        chosen = torch.randint(len(points), (len(dead),), generator=self.generator)
        self.weight[dead] = points[chosen]
        self.embed_sum[dead] = points[chosen]
        self.cluster_size[dead] = 1.0
        self.idle_steps[dead] = 0
        self.restarts += len(dead)


def latents(model: VQModel, images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> the pre-quantization latent [B, C, h, w]."""
    return model.quant_conv(model.encoder(images))


def quantize(codebook: EmaCodebook, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(straight-through quantized latent [B, C, h, w], ids [B, h*w])."""
    batch, dim, height, width = z.shape
    points = z.permute(0, 2, 3, 1).reshape(-1, dim)
    ids = codebook.assign(points.detach())
    q = codebook.weight.detach()[ids].view(batch, height, width, dim).permute(0, 3, 1, 2)
    return z + (q - z).detach(), ids.view(batch, -1)


def decode(model: VQModel, q: torch.Tensor) -> torch.Tensor:
    return model.decode(q, force_not_quantize=True).sample


def losses(model: VQModel, codebook: EmaCodebook, images: torch.Tensor, beta: float
           ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """(total loss, its parts, the pre-quantization points [N, C], their ids [N])."""
    z = latents(model, images)
    q, ids = quantize(codebook, z)
    reconstruction = decode(model, q)
    mse = F.mse_loss(reconstruction, images)
    commitment = F.mse_loss(z, q.detach())
    points = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    parts = {"loss_reconstruction": mse.item(), "loss_commitment": commitment.item(),
             "psnr_train": psnr(mse.item())}
    return mse + beta * commitment, parts, points, ids.flatten()


def psnr(mse_unit_range: float) -> float:
    """PSNR in dB of a mean squared error measured on images scaled to [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(torch.tensor(4.0 / max(mse_unit_range, 1e-12))))
