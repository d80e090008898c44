"""The learning-rate schedule: linear warmup to the peak, then cosine decay to min_lr_ratio x peak.

Step s (0-based, the s-th optimizer update) uses peak * lr_ratio(s): the first update already
trains (warmup starts at 1/warmup, not 0), the peak is reached at the last warmup step, and the
floor at the last step.
"""

from __future__ import annotations

import math

import torch


def lr_ratio(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = max(total - warmup - 1, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(total: int, warmup: int, min_ratio: float):
    """A scheduler factory in the form DeepSpeed's `lr_scheduler` argument takes."""
    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_ratio(s, total, warmup, min_ratio))
    return make
