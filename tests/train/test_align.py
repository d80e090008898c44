"""Contrastive alignment (experiment=align) and the aligned init it feeds."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import compose_runs
from harness.data.dataset import open_dataset
from harness.data.vocab import VocabLayout
from harness.train.align import align, bag_mean, load_alignment
from harness.model.init import build_model
from harness.model.open_lm import Architecture, OpenLM
from harness.train.model_file import save_model_file

EVAL_BATCH = 32  # held-out retrieval among 32 pairs: chance 1/32


def random_lm(directory: Path, config, layout: VocabLayout) -> Path:
    """A stand-in pre-trained LM of the run's architecture: distinct (random) text rows are all
    a bag-of-words alignment needs."""
    arch = Architecture.from_config(config.model, layout.size)
    torch.manual_seed(0)
    return save_model_file(directory, OpenLM(arch).state_dict(), dataclasses.asdict(arch),
                           dataclasses.asdict(layout), 0, 0, None)


def run_alignment(root: Path, tmp_path: Path, *overrides: str) -> dict:
    config = compose_runs(["experiment=align", "scale=smoke", f"paths.data_root={root}",
                           f"align.eval_batch={EVAL_BATCH}", "init.source=unset", *overrides])[0].config
    layout = open_dataset(config.data, root).layout("text")
    lm = random_lm(tmp_path / "lm", config, layout)
    config = dataclasses.replace(config, init=dataclasses.replace(config.init, source=str(lm)))
    return align(config, tmp_path, log=lambda _msg: None)


def test_alignment_retrieves_held_out_pairs_and_the_shuffled_control_does_not(smoke_data_root, tmp_path):
    aligned = run_alignment(smoke_data_root, tmp_path / "aligned")
    control = run_alignment(smoke_data_root, tmp_path / "control", "align.shuffle_captions=true")
    chance = 1 / EVAL_BATCH
    assert aligned["chance"] == chance
    assert aligned["val_top1"] >= 5 * chance, aligned
    assert control["val_top1"] <= 2 * chance, control


def test_the_output_rows_have_the_lm_text_row_norm(smoke_data_root, tmp_path):
    run_alignment(smoke_data_root, tmp_path, "align.steps=5")
    payload = load_alignment(tmp_path / "checkpoints" / "final")
    lm = torch.load(tmp_path / "lm" / "model.pt", weights_only=True)["state_dict"]
    text_rows = payload["layout"]["text_size"]
    expected = lm["tok_embeddings.weight"][:text_rows].norm(dim=1).mean()
    torch.testing.assert_close(payload["rows"]["input"].norm(dim=1), expected.expand(len(payload["rows"]["input"])))


def test_bag_mean_is_the_mean_row():
    table = torch.arange(12.0).view(6, 2)
    means = bag_mean(table, [np.array([0, 2]), np.array([5])])
    torch.testing.assert_close(means, torch.stack([(table[0] + table[2]) / 2, table[5]]))


def test_aligned_init_takes_image_rows_from_the_alignment_and_text_rows_from_the_lm(tmp_path):
    config = compose_runs(["experiment=pretrained_aligned", "scale=micro", "init.source=x", "init.alignment=y"])[0].config
    layout = VocabLayout(text_size=40, pad=0, bos=1, eos=2, codebook_size=16)
    lm_layout = layout.text_only()
    arch = Architecture.from_config(config.model, lm_layout.size)
    torch.manual_seed(5)
    source = {"state_dict": OpenLM(arch).state_dict(), "architecture": dataclasses.asdict(arch)}
    rows = {name: torch.randn(16, config.model.d_model) for name in ("input", "output")}
    model = build_model(config, layout, source, {"rows": rows})
    state = model.state_dict()
    images = slice(layout.image_offset, layout.image_offset + layout.codebook_size)
    for name, table in (("input", "tok_embeddings.weight"), ("output", "output.weight")):
        assert torch.equal(state[table][images], rows[name])
        assert torch.equal(state[table][: layout.text_size], source["state_dict"][table])
        assert not torch.equal(state[table][layout.boi], torch.zeros(config.model.d_model))
    assert torch.equal(state["layers.0.attention.in_proj.weight"], source["state_dict"]["layers.0.attention.in_proj.weight"])


def test_a_misshaped_alignment_is_refused(tmp_path):
    config = compose_runs(["experiment=pretrained_aligned", "scale=micro", "init.source=x", "init.alignment=y"])[0].config
    layout = VocabLayout(text_size=40, pad=0, bos=1, eos=2, codebook_size=16)
    arch = Architecture.from_config(config.model, layout.text_size)
    source = {"state_dict": OpenLM(arch).state_dict(), "architecture": dataclasses.asdict(arch)}
    with pytest.raises(ValueError, match="alignment rows 'input'"):
        build_model(config, layout, source, {"rows": {"input": torch.zeros(3, 3), "output": torch.zeros(3, 3)}})
