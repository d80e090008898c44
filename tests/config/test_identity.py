import pytest

from harness.config import compose_runs, run_id_of


def run_id(*overrides: str, data_hash: str = "d" * 64) -> str:
    return run_id_of(compose_runs(list(overrides))[0].config, data_hash)


@pytest.mark.parametrize("launch_only", [
    "paths.runs_root=/elsewhere/runs", "paths.data_root=/scratch/data", "launch.partition=gpu",
    "launch.account=proj42", "launch.qos=high", "launch.array_parallelism=3", "launch.cluster=other",
    "container.runtime=apptainer", "container.image=/images/harness.sif", "launch.timeout_min=999",
])
def test_launch_only_keys_do_not_change_the_run_id(launch_only):
    assert run_id(launch_only) == run_id()


@pytest.mark.parametrize("result_changing", [
    "seed=1", "train.lr=0.1", "model=micro", "train.precision=bf16", "launch.tasks_per_node=1",
    "init.strategy=pretrained", "train.text_loss_weight=30", "data.text_mix=0.1",
])
def test_what_changes_results_changes_the_run_id(result_changing):
    assert run_id(result_changing) != run_id()


def test_the_data_hash_is_part_of_the_identity():
    assert run_id(data_hash="a" * 64) != run_id(data_hash="b" * 64)


def test_the_run_id_is_stable_and_short():
    assert run_id() == run_id() and len(run_id()) == 10


@pytest.mark.parametrize("neutral", ["train.text_loss_weight=1", "data.text_mix=0", "random_init_long_steps=99"])
def test_a_knob_at_its_neutral_value_keeps_the_ids_of_runs_made_before_it_existed(neutral):
    assert run_id(neutral) == run_id()
