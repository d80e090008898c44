"""Text-to-image sampling: after `<bos> caption <boi>`, exactly `tokens_per_image` image codes.

Constraint inside the image span: every logit but the image codes' is masked, so `<eoi>`, text
and special tokens are never sampled there and each caption yields exactly one image's codes (a
model that would end the image early is forced on; that is the usual practice and it is
recorded in the output's settings). Captions of different lengths are left-padded; padding is
masked out of attention and rotary positions count from each caption's `<bos>`, so a caption gets
the same image alone or in a batch.

Classifier-free guidance (scale s != 1) runs each caption beside the empty caption
`<bos> <boi>` and samples from u + s (c - u).

Each sample draws from its own CPU generator, seeded from (eval seed, the sample's global index
among eval.samples) by `sample_seed`: a caption's image depends on neither eval.batch_size, its
position in a batch, nor how eval.parts split the samples, and the same seed gives the same ids on
any device. Greedy decoding (top_k=1) draws nothing that matters: its ids are the argmax.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from harness.data.vocab import VocabLayout
from harness.model.open_lm import KVCache, OpenLM


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0          # 0: off
    top_p: float = 1.0      # 1.0: off
    cfg_scale: float = 1.0  # 1.0: no guidance
    seed: int = 0


def prompts(captions: list[list[int]], layout: VocabLayout, with_text: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `<bos> caption <boi>` rows (`<boi>` alone without text: the unconditional
    models' sequences start there) and their validity mask."""
    rows = [[layout.bos, *caption, layout.boi] if with_text else [layout.boi] for caption in captions]
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), layout.pad, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = torch.tensor(row)
        valid[i, width - len(row):] = True
    return tokens, valid


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of the sample at global index `index`: the first 8 bytes of
    sha256(f"{seed}:{index}") as a big-endian integer with the top bit cleared (63 bits, a valid
    manual_seed everywhere). A hash rather than seed + index, so that runs with neighbouring eval
    seeds do not share all but one of their samples' draws."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_generators(seed: int, first_index: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, for the samples at global indices [first_index, +count)."""
    return [torch.Generator().manual_seed(sample_seed(seed, first_index + i)) for i in range(count)]


@torch.no_grad()
def generate(model: OpenLM, captions: list[list[int]], layout: VocabLayout, tokens_per_image: int,
             sampling: Sampling = Sampling(), use_cache: bool = True, with_text: bool = True,
             first_index: int = 0) -> torch.Tensor:
    """Image code ids [len(captions), tokens_per_image] (codes, not vocabulary ids). Without text
    (an unconditional model) the captions are ignored and each row starts at `<boi>`.
    `first_index`: the global sample index of captions[0] (its position among eval.samples), which
    with sampling.seed decides each row's draws."""
    guided = sampling.cfg_scale != 1.0 and with_text
    rows = captions + [[] for _ in captions] if guided else captions
    tokens, valid = prompts(rows, layout, with_text)
    device = next(model.parameters()).device
    tokens, valid = tokens.to(device), valid.to(device)
    generators = sample_generators(sampling.seed, first_index, len(captions))
    cache = KVCache() if use_cache else None
    step_tokens, codes = tokens, []
    for _ in range(tokens_per_image):
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        step_positions = positions[:, -step_tokens.shape[1]:]
        logits = model(step_tokens, cache=cache, positions=step_positions, key_valid=valid)[:, -1].float()
        if guided:
            conditional, unconditional = logits.chunk(2)
            logits = unconditional + sampling.cfg_scale * (conditional - unconditional)
        image_logits = logits[:, layout.image_offset: layout.image_offset + layout.codebook_size]
        code = sample(image_logits, sampling, generators).to(device)
        codes.append(code)
        next_ids = (code + layout.image_offset).repeat(2 if guided else 1)[:, None]
        tokens = torch.cat([tokens, next_ids], 1)
        valid = torch.cat([valid, torch.ones_like(next_ids, dtype=torch.bool)], 1)
        step_tokens = next_ids if use_cache else tokens
    return torch.stack(codes, 1)


def sample(logits: torch.Tensor, sampling: Sampling, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One id per row from temperature-scaled logits, after top-k and top-p filtering; row i
    draws from generators[i] alone, so its id does not depend on the other rows."""
    logits = logits.cpu() / max(sampling.temperature, 1e-6)
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) > sampling.top_p  # keep the first token past top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probabilities = logits.softmax(-1)
    return torch.cat([torch.multinomial(row, 1, generator=generator)
                      for row, generator in zip(probabilities, generators, strict=True)])
