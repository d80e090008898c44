"""Token-weighted next-token losses, split by modality.

loss_text covers caption (or document) tokens, <eos> and <boi>; loss_image covers image codes and
<eoi>; <pad> is never a target. Sums and counts are reduced across ranks before dividing, so every
reported loss is the mean over all non-pad targets of the global batch, whatever the split per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.data.vocab import VocabLayout


@dataclass
class LossSums:
    """Summed token losses and token counts: [text_sum, text_count, image_sum, image_count]."""

    values: torch.Tensor

    @classmethod
    def zero(cls) -> "LossSums":
        return cls(torch.zeros(4, dtype=torch.float64))

    def __iadd__(self, other: "LossSums") -> "LossSums":
        self.values += other.values
        return self

    @property
    def tokens(self) -> int:
        return int(self.values[1] + self.values[3])

    def summary(self) -> dict[str, float | None]:
        text_sum, text_n, image_sum, image_n = self.values.tolist()
        total_n = text_n + image_n
        return {
            "loss": (text_sum + image_sum) / total_n if total_n else None,
            "loss_text": text_sum / text_n if text_n else None,
            "loss_image": image_sum / image_n if image_n else None,
        }


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy in fp32, shape of targets."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return flat.view_as(targets)


def split_sums(losses: torch.Tensor, targets: torch.Tensor, layout: VocabLayout) -> LossSums:
    text, image = layout.is_text_target(targets), layout.is_image_target(targets)
    detached = losses.detach().double()
    return LossSums(torch.stack([
        (detached * text).sum(), text.sum().double(), (detached * image).sum(), image.sum().double(),
    ]))


def count_targets(tokens: torch.Tensor, layout: VocabLayout) -> int:
    """Non-pad targets of a [batch, seq] token block: the 'tokens' a step trains on."""
    return int((tokens[:, 1:] != layout.pad).sum())
