"""TensorBoard and W&B (offline) views of a micro run that is preempted and resumed, through the
real `harness submit`: the same values as metrics.jsonl, one W&B run across both attempts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.rundir import find_runs, read_metrics
from harness.tracking import TB_DIR, tensorboard_command
from tests.conftest import run_cli
from tests.train.test_resume import submit

WANDB = ("logging.wandb=true", "logging.wandb_mode=offline")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, data_root):
    runs_root = tmp_path_factory.mktemp("runs")
    first = submit(runs_root, data_root, *WANDB, env={"HARNESS_PREEMPT_AT_STEP": "7"})
    assert first.returncode == 1 and "preempted: checkpointed" in first.stderr, first.stderr
    second = submit(runs_root, data_root, *WANDB)
    assert second.returncode == 0, second.stderr
    (run,) = find_runs(runs_root)
    return runs_root, run


def test_tensorboard_holds_the_logged_losses_once_each_after_a_resume(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run = resumed
    events = EventAccumulator(str(run.path / TB_DIR)).Reload()
    for key in ("loss", "loss_text", "loss_image", "lr", "tokens"):
        logged = [(r["step"], r[key]) for r in read_metrics(run.metrics_path)]
        shown = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert [s for s, _ in shown] == [s for s, _ in logged], key  # replayed steps are not shown twice
        assert np.array_equal(np.float32([v for _, v in shown]), np.float32([v for _, v in logged])), key
    (held_out,) = events.Scalars("val/loss_image")
    assert held_out.step == 24


def test_both_attempts_log_to_one_offline_wandb_run_named_by_the_run_id(resumed):
    _, run = resumed
    attempts = sorted((run.path / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all(a.name.endswith(f"-{run.run_id}") for a in attempts)
    assert all((a / f"run-{run.run_id}.wandb").stat().st_size > 0 for a in attempts)


def test_harness_tb_prints_the_command_over_the_runs_root(resumed):
    runs_root, _ = resumed
    result = run_cli("tb", "random_init", "--runs-root", str(runs_root))
    assert result.returncode == 0 and result.stdout.strip() == tensorboard_command(runs_root, "random_init")
    missing = run_cli("tb", "pretrained", "--runs-root", str(runs_root))
    assert missing.returncode == 2 and "pretrained does not exist" in missing.stderr


def test_an_evaluation_joins_the_evaluated_runs_views_at_its_step(resumed, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs_root, run = resumed
    result = run_cli("submit", "experiment=eval_language", f"run={run.name}", *WANDB,
                     f"paths.runs_root={runs_root}", f"paths.data_root={data_root}", "scale=micro")
    assert result.returncode == 0, result.stderr
    written = json.loads((run.path / "eval" / "language@24.json").read_text())
    events = EventAccumulator(str(run.path / TB_DIR)).Reload()
    (shown,) = events.Scalars("eval/facts_probe_accuracy")
    assert (shown.step, shown.value) == (24, np.float32(written["tasks"]["facts_probe"]["accuracy"]))
    assert len(list((run.path / "wandb").glob(f"offline-run-*-{run.run_id}"))) == 3


def test_a_tracker_that_fails_is_dropped_with_a_warning_and_never_stops_the_work(tmp_path, capsys):
    from harness.config import compose_runs
    from harness.rundir import RunDir
    from harness.tracking import Trackers

    run = RunDir(tmp_path / "random_init" / "abc")
    run.path.mkdir(parents=True)
    (run.path / TB_DIR).write_text("a file where the event directory would go")
    trackers = Trackers(run, compose_runs(["scale=micro"])[0].config, resumed_step=0)
    trackers.log({"train/loss": 1.0}, 1)
    trackers.close()
    assert trackers.tensorboard is None and "warning: TensorBoard logging stopped" in capsys.readouterr().err
