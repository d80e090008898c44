"""The joint vocabulary: text tokens, then image codes, then <boi> and <eoi>.

    [0, text_size)                          text tokenizer ids (incl. <pad>, <bos>, <eos>)
    [text_size, text_size + codebook_size)  image code c -> text_size + c
    text_size + codebook_size               <boi>
    text_size + codebook_size + 1           <eoi>

A text-only model (the pre-trained LM) uses the first block only; expanding it for images appends
rows, so text ids keep their rows and a pre-trained model's text rows can be copied as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VocabLayout:
    text_size: int
    pad: int
    bos: int
    eos: int
    codebook_size: int = 0  # 0: text-only

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def boi(self) -> int:
        return self.text_size + self.codebook_size

    @property
    def eoi(self) -> int:
        return self.boi + 1

    @property
    def size(self) -> int:
        return self.text_size + self.codebook_size + 2 if self.codebook_size else self.text_size

    def text_only(self) -> "VocabLayout":
        return VocabLayout(self.text_size, self.pad, self.bos, self.eos, 0)

    def is_image_target(self, ids: torch.Tensor) -> torch.Tensor:
        """Targets scored as image loss: image codes and <eoi>."""
        if not self.codebook_size:
            return torch.zeros_like(ids, dtype=torch.bool)
        return (ids >= self.image_offset) & (ids <= self.eoi) & (ids != self.boi)

    def is_text_target(self, ids: torch.Tensor) -> torch.Tensor:
        """Targets scored as text loss: caption/document tokens, <eos> and <boi>; never <pad>."""
        return (ids != self.pad) & ~self.is_image_target(ids)
