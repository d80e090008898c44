"""Loading open_lm's released checkpoint format, with synthetic files in the real key format."""

import pytest
import torch

from harness.errors import HarnessError
from harness.model.open_lm import Architecture, OpenLM
from harness.model.released import load_released

ARCH = Architecture(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, vocab_size=50, positional="head_rotary",
                    norm_eps=1e-5, init_std=0.02)


def released_file(tmp_path, state):
    path = tmp_path / "open_lm_tiny.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path


def trained_state(prefix: str = "module.") -> dict:
    torch.manual_seed(1)
    return {prefix + k: v + torch.randn_like(v) for k, v in OpenLM(ARCH).state_dict().items()}


def test_a_ddp_checkpoint_loads_bit_for_bit(tmp_path):
    state = trained_state()
    model = OpenLM(ARCH)
    load_released(model, released_file(tmp_path, state))
    assert all(torch.equal(v, state["module." + k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("module.layers.1.feed_forward.w3.weight"), r"missing \(1\): layers.1.feed_forward.w3.weight"),
    (lambda s: s.update({"module.layers.2.attention.in_proj.weight": torch.zeros(1)}),
     r"unexpected \(1\): layers.2.attention.in_proj.weight"),
    (lambda s: s.update({"module.output.weight": torch.zeros(60, 32)}), r"wrong shape \(1\): output.weight \(60, 32\) != \(50, 32\)"),
])
def test_any_mismatch_fails_naming_the_key(tmp_path, change, message):
    state = trained_state()
    change(state)
    with pytest.raises(HarnessError, match=message):
        load_released(OpenLM(ARCH), released_file(tmp_path, state))


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        load_released(OpenLM(ARCH), tmp_path / "open_lm_1b.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match=f"{bad} is unreadable"):
        load_released(OpenLM(ARCH), bad)
