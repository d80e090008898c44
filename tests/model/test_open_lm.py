from pathlib import Path

import pytest
import torch

from harness.config import compose_runs
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
