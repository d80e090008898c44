"""`harness selftest`: the image works — imports, and a micro open_lm forward and backward pass."""

from __future__ import annotations

import torch

from harness.model.open_lm import Architecture, OpenLM


def run() -> str:
    import deepspeed  # noqa: F401  (the trainer's engine must import in the image)

    torch.manual_seed(0)
    arch = Architecture(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, vocab_size=64,
                        positional="rotary", norm_eps=1e-5, init_std=0.02)
    model = OpenLM(arch)
    tokens = torch.randint(0, arch.vocab_size, (2, 16))
    logits = model(tokens)
    if logits.shape != (2, 16, arch.vocab_size) or not torch.isfinite(logits).all():
        raise RuntimeError(f"micro forward pass gave {tuple(logits.shape)} / non-finite logits")
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"selftest ok: torch {torch.__version__} on {device}, micro open_lm forward/backward {tuple(logits.shape)}"
