"""What a pre-trained init's weights assume (positional type, text tokenizer) is checked at submit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import compose_runs
from harness.data.vocab import VocabLayout
from harness.model.open_lm import Architecture, OpenLM
from harness.plan import plan
from harness.train.model_file import recorded_assumptions, save_model_file
from tests.conftest import micro_args, run_cli


def lm_file(directory, positional: str, text_tokenizer: str | None):
    config = compose_runs(["experiment=pretrain_text", "scale=micro", f"model.positional={positional}"])[0].config
    layout = VocabLayout(text_size=config.data.text_vocab_size, pad=0, bos=1, eos=2)
    arch = Architecture.from_config(config.model, layout.size)
    torch.manual_seed(0)
    return save_model_file(directory, OpenLM(arch).state_dict(), dataclasses.asdict(arch),
                           dataclasses.asdict(layout), 0, 0, text_tokenizer)


@pytest.fixture
def micro_tokenizer(micro_dataset) -> str:
    return micro_dataset.manifest["text_tokenizer"]["sha256"]


def test_a_model_file_records_what_its_weights_assume(tmp_path):
    path = lm_file(tmp_path / "lm", "head_rotary", "ab" * 32)
    assert recorded_assumptions(path) == {"positional": "head_rotary", "text_tokenizer": "ab" * 32}


def test_weights_trained_with_another_tokenizer_are_refused_at_submit(tmp_path, data_root, micro_tokenizer):
    other = "0" * 64
    path = lm_file(tmp_path / "lm", "rotary", other)
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=pretrained", f"init.source={path}", *micro_args(runs_root, data_root))
    assert result.returncode == 2
    assert "text_tokenizer" in result.stderr and other in result.stderr and micro_tokenizer in result.stderr
    assert not runs_root.exists()


def test_weights_trained_with_another_positional_type_are_refused_at_submit(tmp_path, data_root, micro_tokenizer):
    path = lm_file(tmp_path / "lm", "rotary", micro_tokenizer)
    result = run_cli("submit", "experiment=pretrained", f"init.source={path}", "model.positional=head_rotary",
                     *micro_args(tmp_path / "runs", data_root), "--dry-run")
    assert result.returncode == 2
    assert "positional 'rotary'" in result.stderr and "'head_rotary'" in result.stderr


def test_an_upstream_planned_in_the_same_submit_is_checked_by_its_config(tmp_path, data_root):
    """pretrain_text is planned with this run's model and data, so it agrees: the dry run passes."""
    result = run_cli("submit", "experiment=pretrained", *micro_args(tmp_path / "runs", data_root), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_done_upstream_whose_weights_are_gone_is_refused_at_submit_naming_them(tmp_path, data_root):
    """A clone of committed results holds done runs without checkpoints: refused before any job."""
    runs_root = tmp_path / "runs"
    upstream = plan(["experiment=pretrained", *micro_args(runs_root, data_root)], log=lambda _msg: None)[0].run
    upstream.path.mkdir(parents=True)
    upstream.config_path.write_text("experiment: pretrain_text\n")
    upstream.done_path.write_text("done\n")
    for dry_run in (["--dry-run"], []):
        result = run_cli("submit", *dry_run, "experiment=pretrained", *micro_args(runs_root, data_root))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"init.source={upstream.name}: that run is done but its weights" in result.stderr
        assert "checkpoints/final are missing" in result.stderr
    assert sorted(p.name for p in runs_root.iterdir()) == ["pretrain_text"]
