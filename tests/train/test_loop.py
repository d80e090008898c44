"""The training step's loss knobs (train.text_loss_weight, data.text_mix), through `harness submit`."""

import json
import shutil

import pytest
import torch

from harness.config import compose_runs
from harness.data.dataset import dataset_dir
from harness.data.vocab import VocabLayout
from harness.train.loop import target_weights
from tests.conftest import micro_args, run_cli


def metrics(runs_root, experiment="random_init"):
    (run_dir,) = (runs_root / experiment).iterdir()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_text_targets_weigh_text_loss_weight_and_pad_nothing():
    layout = VocabLayout(text_size=10, pad=0, bos=1, eos=2, codebook_size=4)
    targets = torch.tensor([[5, layout.boi, layout.image_offset, layout.eoi, 0]])
    assert target_weights(targets, layout, 30.0).tolist() == [[30.0, 30.0, 1.0, 1.0, 0.0]]
    assert target_weights(targets, layout, 1.0).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]


def test_a_weighted_run_logs_the_same_unweighted_losses_before_its_first_update(tmp_path, data_root):
    logged = {}
    for weight in (1, 30):
        runs_root = tmp_path / f"w{weight}"
        result = run_cli("submit", "experiment=random_init", f"train.text_loss_weight={weight}",
                         *micro_args(runs_root, data_root, "train.steps=6", "train.log_every=1"))
        assert result.returncode == 0, result.stdout + result.stderr
        logged[weight] = metrics(runs_root)
    first = {w: {k: rows[0][k] for k in ("loss_text", "loss_image")} for w, rows in logged.items()}
    assert first[1] == first[30]  # same init, same batch: the logged losses are not weighted
    # ...and the weighting changes training: text is learned faster, the updates differ.
    assert logged[30][-1]["loss_text"] < logged[1][-1]["loss_text"]


def test_a_text_mix_logs_the_documents_loss_apart(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=random_init", "data.text_mix=0.3",
                     *micro_args(runs_root, data_root, "train.steps=4", "train.log_every=1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = metrics(runs_root)
    assert all(r["loss_documents"] > 0 and r["loss_text"] > 0 and r["loss_image"] > 0 for r in rows)


@pytest.mark.parametrize("bad, named", [
    ("train.text_loss_weight=0", "train.text_loss_weight: 0.0 is outside (0, inf)"),
    ("train.text_loss_weight=-1", "train.text_loss_weight: -1.0 is outside (0, inf)"),
    ("data.text_mix=1.0", "data.text_mix: 1.0 is outside [0, 1)"),
    ("data.text_mix=-0.1", "data.text_mix: -0.1 is outside [0, 1)"),
])
def test_a_knob_out_of_range_exits_2_naming_the_key(tmp_path, data_root, bad, named):
    result = run_cli("submit", "--dry-run", "experiment=random_init", bad, *micro_args(tmp_path, data_root))
    assert result.returncode == 2 and named in result.stderr and f"command line: {bad}" in result.stderr


@pytest.mark.parametrize("experiment, knob, named", [
    ("caption_lm", "data.text_mix=0.1", "data.corpus 'caption_text'"),
    ("pretrain_text", "train.text_loss_weight=10", "data.corpus 'text'"),
    ("eval_image", "train.text_loss_weight=10", "job 'eval_image'"),
])
def test_a_knob_outside_image_caption_training_is_refused(tmp_path, data_root, experiment, knob, named):
    result = run_cli("submit", "--dry-run", f"experiment={experiment}", knob, *micro_args(tmp_path, data_root))
    assert result.returncode == 2 and knob.split("=")[0] in result.stderr and named in result.stderr


def test_a_text_mix_on_a_dataset_without_documents_is_refused_before_anything_is_written(tmp_path, data_root):
    built = dataset_dir(compose_runs(["scale=micro"])[0].config.data, data_root)
    captions_only = tmp_path / "data" / built.name
    shutil.copytree(built, captions_only)
    manifest = json.loads((captions_only / "manifest.json").read_text())
    del manifest["corpora"]["text"]
    (captions_only / "manifest.json").write_text(json.dumps(manifest))
    runs_root = tmp_path / "runs"
    for dry_run in (["--dry-run"], []):
        result = run_cli("submit", *dry_run, "experiment=random_init", "data.text_mix=0.1",
                         *micro_args(runs_root, tmp_path / "data"))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "data.text_mix=0.1 needs pre-training documents" in result.stderr and "no text/train split" in result.stderr
    assert not runs_root.exists()
