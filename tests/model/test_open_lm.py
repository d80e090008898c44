import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.config import compose_runs
from harness.data.vocab import VocabLayout
from harness.model.open_lm import Architecture, OpenLM, swiglu_hidden

# Copied from shared/fixtures: the released checkpoint's key names and shapes.
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "open_lm_1b_keys.txt"


def fixture_keys() -> list[tuple[str, list[int]]]:
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _kind = line.split("\t")
            rows.append((key, [int(v) for v in shape.strip("[]").split(",") if v.strip()]))
    return rows


def test_swiglu_hidden_rule():
    assert swiglu_hidden(2048) == 5632


def test_open_lm_1b_keys_and_shapes_match_the_released_layout():
    config = compose_runs(["model=open_lm_1b"])[0].config.model
    with torch.device("meta"):
        model = OpenLM(Architecture.from_config(config, vocab_size=50432))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == fixture_keys()
    assert sum(p.numel() for p in model.parameters()) == 1_439_895_552


@pytest.mark.parametrize("positional", ["rotary", "head_rotary", "none"])
def test_the_model_is_causal(positional):
    torch.manual_seed(0)
    arch = Architecture(d_model=16, n_layers=2, n_heads=2, ffn_hidden=32, vocab_size=30,
                        positional=positional, norm_eps=1e-5, init_std=0.2)
    model = OpenLM(arch)
    tokens = torch.randint(0, 30, (1, 6))
    changed = tokens.clone()
    changed[0, 4] = (tokens[0, 4] + 1) % 30
    assert torch.equal(model(tokens)[0, :4], model(changed)[0, :4])
    assert not torch.equal(model(tokens)[0, 4:], model(changed)[0, 4:])


def test_head_rotary_ignores_position_beyond_the_causal_mask():
    """open_lm's head_rotary rotates q and k of a head alike, so attention scores are unrotated."""
    torch.manual_seed(0)
    kwargs = dict(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, vocab_size=30, norm_eps=1e-5, init_std=0.2)
    head = OpenLM(Architecture(positional="head_rotary", **kwargs))
    plain = OpenLM(Architecture(positional="none", **kwargs))
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if "inv_freq" not in k})
    tokens = torch.randint(0, 30, (2, 7))
    torch.testing.assert_close(head(tokens), plain(tokens))


def test_activation_checkpointing_changes_memory_not_results():
    kwargs = dict(d_model=16, n_layers=3, n_heads=2, ffn_hidden=32, vocab_size=30, positional="rotary",
                  norm_eps=1e-5, init_std=0.2)
    torch.manual_seed(0)
    plain = OpenLM(Architecture(**kwargs))
    recomputed = OpenLM(Architecture(**kwargs, activation_checkpointing=True))
    recomputed.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 30, (2, 9))
    grads = []
    for model in (plain, recomputed):
        loss = model(tokens).logsumexp(-1).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_expansion_adds_the_image_codebook_and_specials_to_both_vocabulary_matrices():
    config = compose_runs(["model=open_lm_1b"])[0].config.model
    layout = VocabLayout(text_size=50_432, pad=1, bos=0, eos=0, codebook_size=16_384)
    with torch.device("meta"):
        model = OpenLM(Architecture.from_config(config, vocab_size=layout.size))
    assert layout.size == 50_432 + 16_384 + 2
    assert model.tok_embeddings.weight.shape == (layout.size, 2048)
    assert model.output.weight.shape == (layout.size, 2048)


def counted_by_hand(d: int, layers: int, vocab: int) -> int:
    hidden = 256 * math.ceil(8 * d / 3 / 256)  # open_lm's SwiGLU rule
    per_layer = 3 * d * d + d * d + 3 * hidden * d + 4 * d  # qkv, out, w12 + w3, two LayerNorms
    return 2 * vocab * d + layers * per_layer + 2 * d


@pytest.mark.parametrize("name, d_model, layers", [("open_lm_tiny", 96, 2), ("open_lm_79m", 512, 8),
                                                   ("open_lm_160m", 576, 24), ("open_lm_411m", 1024, 24),
                                                   ("open_lm_1b", 2048, 24)])
def test_sizes_follow_open_lm_layouts(name, d_model, layers):
    config = compose_runs([f"model={name}"])[0].config.model
    with torch.device("meta"):
        model = OpenLM(Architecture.from_config(config, vocab_size=50_432))
    assert (model.arch.d_model, model.arch.n_layers) == (d_model, layers)
    assert sum(p.numel() for p in model.parameters()) == counted_by_hand(d_model, layers, 50_432)


def reference_forward(state: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int, rotary: bool) -> torch.Tensor:
    """open_lm's forward written out from the raw tensors: an independent check of OpenLM."""
    x = state["tok_embeddings.weight"][tokens]
    seq, dim = tokens.shape[1], x.shape[-1]
    head_dim = dim // n_heads
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.arange(seq).float()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(t):  # t: [batch, seq, heads, head_dim]
        if not rotary:
            return t
        half = head_dim // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * cos[None, :, None, :] + rotated * sin[None, :, None, :]

    def norm(t, prefix):
        return F.layer_norm(t, (dim,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)

    mask = torch.full((seq, seq), float("-inf")).triu(1)
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    for i in layers:
        p = f"layers.{i}"
        h = norm(x, f"{p}.attention_norm")
        q, k, v = (h @ state[f"{p}.attention.in_proj.weight"].T).split(dim, -1)
        q, k, v = (t.reshape(*t.shape[:2], n_heads, head_dim) for t in (q, k, v))
        q, k = rope(q), rope(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / head_dim ** 0.5 + mask
        out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(*x.shape)
        x = x + out @ state[f"{p}.attention.out_proj.weight"].T
        h = norm(x, f"{p}.ffn_norm")
        gate, up = (h @ state[f"{p}.feed_forward.w12.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ state[f"{p}.feed_forward.w3.weight"].T
    return norm(x, "norm") @ state["output.weight"].T


@pytest.mark.parametrize("positional", ["rotary", "head_rotary"])
@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_logits_match_an_independent_forward_from_the_raw_tensors(positional, attention):
    torch.manual_seed(0)
    arch = Architecture(d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, vocab_size=50, positional=positional,
                        norm_eps=1e-5, init_std=0.1, attention=attention)
    model = OpenLM(arch).eval()
    tokens = torch.randint(0, 50, (3, 11))
    with torch.no_grad():
        expected = reference_forward(model.state_dict(), tokens, n_heads=4, rotary=positional == "rotary")
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)


def open_lm_rule(name: str, d_model: int, hidden: int) -> float:
    """open_lm's reset_parameters, written out again: 1/sqrt(dim) for the embedding, output, in_proj
    and w12; 1/sqrt(fan_in)/sqrt(2 (layer + 1)) for out_proj (fan_in dim) and w3 (fan_in hidden)."""
    if name.endswith("out_proj.weight") or name.endswith("w3.weight"):
        fan_in = hidden if name.endswith("w3.weight") else d_model
        return 1 / math.sqrt(fan_in) / math.sqrt(2 * (int(name.split(".")[1]) + 1))
    return 1 / math.sqrt(d_model)


TRUNCATED = 0.9866  # the realised std of a +-3 std truncated normal, in units of its std


def test_a_fresh_smoke_model_draws_every_tensor_family_by_open_lms_rule():
    config = compose_runs(["scale=smoke"])[0].config
    torch.manual_seed(0)
    model = OpenLM(Architecture.from_config(config.model, 1024 + 1024 + 2))
    hidden = model.arch.ffn_hidden
    for name, param in model.named_parameters():
        if "norm" in name:
            assert torch.all(param == (1 if name.endswith("weight") else 0)), name
            continue
        expected = TRUNCATED * open_lm_rule(name, model.arch.d_model, hidden)
        assert abs(param.std().item() - expected) < 0.02 * expected, name
        assert param.abs().max().item() <= 3 * open_lm_rule(name, model.arch.d_model, hidden) + 1e-7, name


def test_open_lm_1b_tensors_follow_the_rule_at_their_real_shapes():
    """The 1B model's every key against the rule (names from the released key list); one tensor per
    family drawn at its real shape (the whole model would be 5.8 GB of fp32)."""
    from harness.model.open_lm import init_std, initialise

    config = compose_runs(["scale=paper"])[0].config
    arch = Architecture.from_config(config.model, 50432 + 16384 + 2)
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in OpenLM(arch).named_parameters()}
    for name in shapes:
        if "norm" not in name:
            assert init_std(arch, name) == pytest.approx(open_lm_rule(name, arch.d_model, arch.ffn_hidden)), name
    torch.manual_seed(0)
    for name in ("layers.0.attention.in_proj.weight", "layers.0.attention.out_proj.weight",
                 "layers.23.attention.out_proj.weight", "layers.0.feed_forward.w12.weight",
                 "layers.23.feed_forward.w3.weight"):
        param = torch.empty(shapes[name])
        initialise(param, name, arch)
        expected = TRUNCATED * open_lm_rule(name, arch.d_model, arch.ffn_hidden)
        assert abs(param.std().item() - expected) < 0.02 * expected, name
    # 5x off before: N(0, 0.02) scaled by 1/sqrt(2 * 24) for layer 0's out_proj
    assert init_std(arch, "layers.0.attention.out_proj.weight") / (0.02 / math.sqrt(48)) > 5


def test_the_normal_scheme_stays_selectable():
    config = compose_runs(["scale=smoke", "model.init=normal", "model.init_std=0.02"])[0].config
    torch.manual_seed(0)
    model = OpenLM(Architecture.from_config(config.model, 100))
    assert abs(model.tok_embeddings.weight.std().item() - 0.02) < 0.02 * 0.03
