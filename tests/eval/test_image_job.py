"""The image evaluation as a job: through `harness submit`, at smoke scale, on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

from harness.config import compose_runs
from harness.data.dataset import open_dataset
from harness.errors import HarnessError
from harness.eval.image_job import _clip_score
from harness.eval.losses import held_out_losses, val_positions
from harness.data.stream import sequence
from harness.model.open_lm import Architecture, OpenLM
from tests.conftest import micro_args, run_cli


def test_the_image_evaluation_runs_at_smoke_scale_through_submit(tmp_path, smoke_data_root):
    paths = [f"paths.runs_root={tmp_path / 'runs'}", f"paths.data_root={smoke_data_root}"]
    trained = run_cli("submit", "experiment=random_init", "scale=smoke", "train.steps=30",
                      "train.checkpoint_every_steps=10", *paths)
    assert trained.returncode == 0, trained.stderr
    (run_dir,) = (tmp_path / "runs" / "random_init").iterdir()
    assert json.loads((run_dir / "eval" / "val_loss@30.json").read_text())["loss_image"] > 0  # during training

    evaluated = run_cli("submit", "experiment=eval_image", "scale=smoke", f"run=random_init/{run_dir.name}",
                        "step=20", "eval.parts=2", "eval.samples=24", *paths)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "FD (shapes classifier)" in evaluated.stdout and "FID" not in evaluated.stdout
    result = json.loads((run_dir / "eval" / "image@20.json").read_text())
    assert result["metric"] == "FD (shapes classifier)" and result["samples"] == 24 and result["value"] > 0
    assert "fid_mode" in result and result["fid_mode"] is None  # recorded: no Inception, no FID mode
    assert "tokenizer-smoke" in result["image_tokenizer"] and result["clip_score"]["value"] is None
    assert result["file"] == f"random_init/{run_dir.name}/eval/image@20.json"  # relative to the runs root
    # Synthetic captions are checked against the generated images, over both parts' samples.
    compliance = result["compliance"]
    assert compliance["n"] == 24 and 0 <= compliance["whole_caption"] <= 1
    assert set(compliance["attributes"]) == {"background", "colour", "shape", "size"}
    assert len(list((run_dir / "eval" / "image@20" / "samples").glob("*.png"))) == 2  # one grid per part
    losses = json.loads((run_dir / "eval" / "val_loss@20.json").read_text())
    assert losses["ppl_image"] == pytest.approx(2.718281828 ** losses["loss_image"])

    # Other sampling settings on the same checkpoint would regenerate the samples under a result
    # that no longer describes them: refused, and what was written stays.
    grids = sorted(p.read_bytes() for p in (run_dir / "eval" / "image@20" / "samples").glob("*.png"))
    again = run_cli("submit", "experiment=eval_image", "scale=smoke", f"run=random_init/{run_dir.name}",
                    "step=20", "eval.parts=2", "eval.samples=24", "eval.top_k=4", *paths)
    assert again.returncode != 0 and "already holds an evaluation made with other settings" in again.stdout + again.stderr
    assert json.loads((run_dir / "eval" / "image@20.json").read_text()) == result
    assert sorted(p.read_bytes() for p in (run_dir / "eval" / "image@20" / "samples").glob("*.png")) == grids


def test_an_eval_job_waits_for_its_training_job(tmp_path, data_root):
    result = run_cli("submit", "--dry-run", "experiment=eval_image", "cluster=slurm_ci",
                     *micro_args(tmp_path / "runs", data_root))
    assert result.returncode == 0, result.stderr
    train, evaluation = result.stdout.split("# sbatch (")[1:]
    assert "harness-random_init" in train and "harness-eval_image" in evaluation
    assert "#SBATCH --dependency='afterok:<job of random_init/" in evaluation


def test_held_out_losses_match_a_direct_computation(micro_dataset):
    config = compose_runs(["scale=micro"])[0].config
    layout = micro_dataset.layout("captions")
    torch.manual_seed(0)
    model = OpenLM(Architecture.from_config(config.model, layout.size)).eval()
    ours = held_out_losses(model, micro_dataset, "captions", config.data.seq_len, batch_size=5)
    reader = micro_dataset.reader("captions", "val")
    text, image, sample_image = [], [], []
    for shard, offset in val_positions(micro_dataset, "captions"):
        tokens = sequence(reader.sample(shard, offset), layout, config.data.seq_len)
        with torch.no_grad():
            losses = F.cross_entropy(model(tokens[None, :-1])[0], tokens[1:], reduction="none")
        mine = []
        for target, loss in zip(tokens[1:].tolist(), losses.tolist()):
            if target == layout.pad:
                continue
            (mine if layout.image_offset <= target <= layout.eoi and target != layout.boi else text).append(loss)
        image += mine
        sample_image.append(sum(mine) / len(mine))
    assert ours["per_sample"]["loss_image"] == pytest.approx(sample_image, rel=1e-5)  # same order, each its own
    assert len(ours["per_sample"]["loss_text"]) == len(sample_image)
    assert ours["loss_text"] == pytest.approx(sum(text) / len(text), rel=1e-5)
    assert ours["loss_image"] == pytest.approx(sum(image) / len(image), rel=1e-5)
    assert ours["targets_text"] == len(text) and ours["targets_image"] == len(image)


def test_a_configured_clip_model_that_is_missing_is_named(tmp_path):
    config = compose_runs(["experiment=eval_image", f"eval.clip={tmp_path / 'clip'}"])[0].config
    with pytest.raises(HarnessError, match="CLIP model .*clip not found"):
        _clip_score(config, tmp_path, ["a caption"])
