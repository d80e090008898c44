"""Pre-trained init: text rows and body copied bit for bit, new rows drawn fresh with the set std."""

import dataclasses
import math

import pytest
import torch

from harness.config import compose_runs
from harness.data.vocab import VocabLayout
from harness.model.init import build_model
from harness.model.open_lm import Architecture, OpenLM

TEXT = VocabLayout(text_size=300, pad=0, bos=1, eos=2)
JOINT = VocabLayout(text_size=300, pad=0, bos=1, eos=2, codebook_size=1024)


def source_model(config) -> dict:
    torch.manual_seed(123)
    model = OpenLM(Architecture.from_config(config.model, TEXT.size))
    with torch.no_grad():  # make the source distinguishable from any fresh init
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return {"state_dict": model.state_dict(), "architecture": dataclasses.asdict(model.arch)}


@pytest.fixture
def config():
    return compose_runs(["experiment=pretrained", "scale=micro", "model.d_model=64", "init.new_row_std=0.05"])[0].config


def test_text_rows_and_body_are_bitwise_the_source(config):
    source = source_model(config)
    model = build_model(config, JOINT, source)
    for name, tensor in model.state_dict().items():
        expected = source["state_dict"][name]
        if name in ("tok_embeddings.weight", "output.weight"):
            assert torch.equal(tensor[: TEXT.size], expected)
        else:
            assert torch.equal(tensor, expected), name


@pytest.mark.parametrize("param", ["tok_embeddings.weight", "output.weight"])
def test_new_rows_are_distinct_and_have_the_configured_std(config, param):
    model = build_model(config, JOINT, source_model(config))
    new_rows = model.state_dict()[param][TEXT.size:]
    assert new_rows.shape == (1024 + 2, 64)
    assert abs(new_rows.std().item() - 0.05) < 0.05 * 0.03
    assert abs(new_rows.mean().item()) < 0.002
    # Not mean-resized: no two rows alike, and far from the mean of the text rows.
    distances = torch.cdist(new_rows, new_rows) + torch.eye(len(new_rows)) * 1e9
    assert distances.min() > 0.1


def test_new_rows_default_to_the_embeddings_own_random_init_rule(config):
    """open_lm's embedding rule: truncated normal (+-3 std), std 1/sqrt(d_model); realised 0.9866 std."""
    config = dataclasses.replace(config, init=dataclasses.replace(config.init, new_row_std=None))
    rows = build_model(config, JOINT, source_model(config)).state_dict()["output.weight"][TEXT.size:]
    expected = 0.9866 / math.sqrt(config.model.d_model)
    assert abs(rows.std().item() - expected) < expected * 0.03
    assert rows.abs().max().item() <= 3 / math.sqrt(config.model.d_model)


def test_an_incompatible_source_is_refused(config):
    source = source_model(config)
    source["architecture"]["n_layers"] += 1
    with pytest.raises(ValueError, match="n_layers"):
        build_model(config, JOINT, source)
