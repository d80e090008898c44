"""The open_lm decoder (mlfoundations/open_lm), with its state-dict key names.

Pre-norm LayerNorm (with bias), fused q/k/v projection, SwiGLU feed-forward with fused gate/up
weights (`w12`), no linear biases, untied input and output embeddings. Positional variants:
`rotary` (NeoX rotate-half RoPE, base 10000), `head_rotary` (open_lm's variant that indexes the
rotation by head; q and k of a head get the same rotation, so attention ignores position beyond the
causal mask), and `none`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from harness.config.schema import ModelConfig


@dataclass(frozen=True)
class Architecture:
    d_model: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    vocab_size: int
    positional: str
    norm_eps: float
    init_std: float
    activation_checkpointing: bool = False
    attention: str = "sdpa"
    init: str = "open_lm"  # open_lm | normal (see OpenLM.reset_parameters)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab_size: int) -> "Architecture":
        hidden = config.ffn_hidden or swiglu_hidden(config.d_model)
        return cls(config.d_model, config.n_layers, config.n_heads, hidden, vocab_size,
                   config.positional, config.norm_eps, config.init_std, config.activation_checkpointing,
                   config.attention, config.init)


# model.attention: which scaled_dot_product_attention kernels may run. `sdpa` lets torch choose;
# `flash` insists on FlashAttention-2 (CUDA, fp16/bf16) and fails loudly where it cannot run.
ATTENTION_BACKENDS: dict[str, list[SDPBackend]] = {
    "sdpa": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
             SDPBackend.MATH],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


def swiglu_hidden(d_model: int) -> int:
    """open_lm's SwiGLU width: 256 * ceil(8 * d_model / 3 / 256) (2048 -> 5632)."""
    return 256 * math.ceil(8 * d_model / 3 / 256)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, by_head: bool, base: float = 10000.0) -> None:
        super().__init__()
        self.by_head = by_head
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # q, k: [batch, seq, heads, head_dim]; head_rotary indexes the rotation by the head axis
        # (so positions, e.g. after a KV cache or left padding, do not matter to it).
        if positions is not None and not self.by_head:
            angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # [batch, seq, half]
            cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
            cos, sin = cos[:, :, None].to(q.dtype), sin[:, :, None].to(q.dtype)
            return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        axis = 2 if self.by_head else 1
        index = torch.arange(q.shape[axis], device=q.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(index, self.inv_freq)
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        shape = (1, 1, -1, q.shape[-1]) if self.by_head else (1, -1, 1, q.shape[-1])
        cos, sin = cos.view(shape).to(q.dtype), sin.view(shape).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class Attention(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.n_heads = arch.n_heads
        self.head_dim = arch.d_model // arch.n_heads
        self.in_proj = nn.Linear(arch.d_model, 3 * arch.d_model, bias=False)
        self.out_proj = nn.Linear(arch.d_model, arch.d_model, bias=False)
        self.backends = ATTENTION_BACKENDS[arch.attention]
        self.pos_embed = (RotaryEmbedding(self.head_dim, by_head=arch.positional == "head_rotary")
                          if arch.positional != "none" else None)

    def forward(self, x: torch.Tensor, step: "DecodeStep | None" = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.in_proj(x).view(batch, seq, 3, self.n_heads, self.head_dim).unbind(2)
        if self.pos_embed is not None:
            q, k = self.pos_embed(q, k, None if step is None else step.positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        mask = None
        if step is not None:
            k, v = step.extend(self, k, v)
            mask = step.mask(seq, k.shape[2])
        with sdpa_kernel(self.backends):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.w12 = nn.Linear(arch.d_model, 2 * arch.ffn_hidden, bias=False)
        self.w3 = nn.Linear(arch.ffn_hidden, arch.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        # Definition order fixes state_dict order; it matches open_lm's.
        self.attention = Attention(arch)
        self.feed_forward = SwiGLU(arch)
        self.attention_norm = nn.LayerNorm(arch.d_model, eps=arch.norm_eps)
        self.ffn_norm = nn.LayerNorm(arch.d_model, eps=arch.norm_eps)

    def forward(self, x: torch.Tensor, step: "DecodeStep | None" = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), step)
        return x + self.feed_forward(self.ffn_norm(x))


class OpenLM(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.tok_embeddings = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.n_layers))
        self.norm = nn.LayerNorm(arch.d_model, eps=arch.norm_eps)
        self.output = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, param in self.named_parameters():
            initialise(param, name, self.arch)

    def forward(self, tokens: torch.Tensor, cache: "KVCache | None" = None, positions: torch.Tensor | None = None,
                key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for `tokens` [batch, seq]. Training passes tokens only. Generation may pass a
        KVCache (tokens then continue what it holds), per-token `positions` (rotary) and
        `key_valid` [batch, cached + seq] (False for left padding)."""
        x = self.tok_embeddings(tokens)
        step = None
        if cache is not None or positions is not None or key_valid is not None:
            step = DecodeStep(cache, positions, key_valid)
        recompute = self.arch.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=False) if recompute else layer(x, step)
        return self.output(self.norm(x))


@torch.no_grad()
def initialise(param: torch.Tensor, name: str, arch: Architecture) -> None:
    """One parameter at random initialisation: LayerNorms 1 and 0, matrices by the scheme."""
    if name.endswith("norm.weight"):
        nn.init.ones_(param)
    elif name.endswith("norm.bias"):
        nn.init.zeros_(param)
    elif arch.init == "open_lm":
        std = init_std(arch, name)
        nn.init.trunc_normal_(param, std=std, a=-3 * std, b=3 * std)
    else:
        nn.init.normal_(param, std=init_std(arch, name))


def init_std(arch: Architecture, name: str) -> float:
    """The std a parameter is drawn with at random initialisation.

    open_lm (its reset_parameters of Transformer, CustomAttn and Block): truncated normal (+-3 std)
    with std 1/sqrt(d_model) for the embedding, the output layer, the attention input projection
    and w12; the residual outputs (attention out_proj, w3) 1/sqrt(fan_in) / sqrt(2 (layer + 1)).
    normal: the GPT-2 style N(0, init_std), residual outputs scaled by 1/sqrt(2 * n_layers)."""
    residual = name.endswith(("out_proj.weight", "w3.weight"))
    if arch.init == "normal":
        return arch.init_std / math.sqrt(2 * arch.n_layers) if residual else arch.init_std
    if not residual:
        return 1.0 / math.sqrt(arch.d_model)
    fan_in = arch.ffn_hidden if name.endswith("w3.weight") else arch.d_model
    layer = int(name.split(".")[1])  # layers.<i>.attention.out_proj.weight
    return 1.0 / math.sqrt(fan_in) / math.sqrt(2 * (layer + 1))


class KVCache:
    """Keys and values of the tokens seen so far, per attention layer: [batch, heads, seen, head_dim]."""

    def __init__(self) -> None:
        self.keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def extend(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if id(layer) in self.keys:
            past_k, past_v = self.keys[id(layer)]
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        self.keys[id(layer)] = (k, v)
        return k, v


@dataclass
class DecodeStep:
    """What one generation forward pass needs beyond the tokens."""

    cache: KVCache | None
    positions: torch.Tensor | None
    key_valid: torch.Tensor | None

    def extend(self, layer: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.extend(layer, k, v) if self.cache is not None else (k, v)

    def mask(self, queries: int, keys: int) -> torch.Tensor:
        """Causal over the whole (cached + new) sequence, and no attention to padding."""
        device = self.key_valid.device if self.key_valid is not None else None
        query_at = torch.arange(keys - queries, keys, device=device)[:, None]
        allowed = torch.arange(keys, device=device)[None, :] <= query_at  # [queries, keys]
        if self.key_valid is None:
            return allowed
        # A padding query may see nothing at all; letting it see itself avoids NaN rows.
        allowed = allowed[None] & self.key_valid[:, None, :keys]
        allowed = allowed | torch.eye(keys, dtype=torch.bool, device=device)[None, keys - queries:]
        return allowed[:, None]
