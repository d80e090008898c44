"""Claims against hand-made runs whose numbers decide each verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.results.claims import DOES_NOT_HOLD, HOLDS, NOT_RUN, evaluate_all
from harness.results.records import collect, read_record
from harness.rundir import find_runs
from tests.results.runs import write_run


def verdicts(root: Path, scale: str = "smoke") -> dict[str, str]:
    records = [read_record(run, root) for run in find_runs(root)]
    return {v.claim["id"]: v.verdict for v in evaluate_all(collect(records)) if v.scale == scale}


def test_equal_losses_hold_and_a_clear_gap_does_not(tmp_path):
    for seed, (random, pre) in enumerate([(6.00, 6.01), (6.02, 5.99), (5.98, 6.03)]):
        write_run(tmp_path / "same", "random_init", seed, loss_image=random, fd=30 + seed)
        write_run(tmp_path / "same", "pretrained", seed, loss_image=pre, fd=30.5 + seed)
        write_run(tmp_path / "gap", "random_init", seed, loss_image=random)
        write_run(tmp_path / "gap", "pretrained", seed, loss_image=pre - 1.0)
    assert verdicts(tmp_path / "same")["image_loss_same"] == HOLDS
    assert verdicts(tmp_path / "same")["fid_same"] == HOLDS
    assert verdicts(tmp_path / "gap")["image_loss_same"] == DOES_NOT_HOLD
    assert verdicts(tmp_path / "gap")["fid_same"] == NOT_RUN  # no image evaluation there


def test_an_early_text_advantage_is_lower_beyond_seed_noise(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "random_init", seed, early_text=7.0 + 0.1 * seed)
        write_run(tmp_path, "pretrained", seed, early_text=2.0 + 0.1 * seed)
    assert verdicts(tmp_path)["text_loss_early_advantage"] == HOLDS


def test_one_seed_per_arm_is_not_enough(tmp_path):
    write_run(tmp_path, "random_init", 0)
    write_run(tmp_path, "pretrained", 0)
    assert verdicts(tmp_path)["image_loss_same"] == NOT_RUN


def test_forgetting_needs_knowledge_before_and_chance_after(tmp_path):
    write_run(tmp_path / "lost", "pretrain_text", 0, language={0: 0.9})
    write_run(tmp_path / "lost", "pretrained", 0, language={0: 0.3})
    write_run(tmp_path / "kept", "pretrain_text", 0, language={0: 0.9})
    write_run(tmp_path / "kept", "pretrained", 0, language={0: 0.8})
    assert verdicts(tmp_path / "lost")["language_forgotten"] == HOLDS
    assert verdicts(tmp_path / "kept")["language_forgotten"] == DOES_NOT_HOLD


@pytest.mark.parametrize("intruder", [
    dict(seed=3, done=False, loss_image=100.0),          # failed
    dict(seed=3, lr=1e-4, loss_image=100.0),             # other settings
    dict(seed=3, scale="micro", loss_image=100.0),       # other scale
])
def test_failed_off_variant_and_other_scale_runs_are_never_averaged_in(tmp_path, intruder):
    for seed in range(3):
        write_run(tmp_path, "random_init", seed, loss_image=6.0 + 0.01 * seed)
        write_run(tmp_path, "pretrained", seed, loss_image=6.0 - 0.01 * seed)
    write_run(tmp_path, "random_init", **intruder)
    collection = collect([read_record(run, tmp_path) for run in find_runs(tmp_path)])
    arm = collection.arm("smoke", "random_init")
    assert [r.seed for r in arm.runs] == [0, 1, 2]
    assert verdicts(tmp_path)["image_loss_same"] == HOLDS
    if intruder.get("scale") != "micro":
        assert len(collection.apart) == 1
