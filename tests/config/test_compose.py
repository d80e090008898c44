import shutil
from pathlib import Path

import pytest

from harness.config import compose, compose_runs, list_experiments, validate
from harness.config.compose import expand_sweeps
from harness.errors import HarnessError


def test_defaults_compose_the_smoke_random_init_run():
    (run,) = compose_runs([])
    config = run.config
    assert (config.experiment, config.scale, config.launch.cluster) == ("random_init", "smoke", "local")
    assert (config.model.name, config.data.name, config.init.strategy) == ("smoke", "smoke", "random")
    assert config.world_size == 2


def test_scale_selects_model_and_data_but_the_command_line_wins():
    config = compose_runs(["scale=micro"])[0].config
    assert (config.model.name, config.data.name, config.train.steps) == ("micro", "micro", 24)
    config = compose_runs(["scale=micro", "model=smoke"])[0].config
    assert (config.model.name, config.data.name) == ("smoke", "micro")


def test_experiment_sets_its_own_keys():
    config = compose_runs(["experiment=pretrain_text"])[0].config
    assert config.data.corpus == "text"
    config = compose_runs(["experiment=pretrained"])[0].config
    assert (config.init.strategy, config.init.source) == ("pretrained", "pretrain_text")


def test_key_and_list_overrides_are_typed():
    config = compose_runs(["train.lr=0.5", "train.betas=[0.8,0.99]", "seed=3"])[0].config
    assert config.train.lr == 0.5 and config.train.betas == [0.8, 0.99] and config.seed == 3


def test_a_mapping_key_takes_the_users_own_keys():
    config = compose_runs(["experiment=eval_language", "eval.language_fewshot={arc_easy: 5}"])[0].config
    assert config.eval.language_fewshot == {"arc_easy": 5}
    config = compose_runs(["experiment=eval_language", "+eval.language_fewshot.piqa=2"])[0].config
    assert config.eval.language_fewshot == {"piqa": 2}


def test_comma_lists_are_sweeps_expanded_as_a_product():
    runs = compose_runs(["seed=0,1,2", "train.lr=0.1,0.2"])
    assert [(r.config.seed, r.config.train.lr) for r in runs] == [
        (0, 0.1), (0, 0.2), (1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert expand_sweeps(["seed=range(0,2)"]) == [("seed=0",), ("seed=1",)]


def test_list_experiments():
    assert {"pretrain_text", "random_init", "pretrained"} <= set(list_experiments())


@pytest.mark.parametrize("overrides, message", [
    (["experiment=nope"], "unknown experiment 'nope' (command line: experiment=nope); valid: align, caption_lm"),
    (["train.lr=abc"], "train.lr: Value 'abc' of type 'str' could not be converted to Float (command line: train.lr=abc)"),
    (["no_such_key=1"], "unknown key 'no_such_key' (command line: no_such_key=1)"),
    (["train.no_such=1"], "unknown key 'train.no_such' (command line: train.no_such=1); valid keys here: steps,"),
    (["model.positional=sideways"], "model.positional: 'sideways' is not one of rotary, head_rotary, none (command line"),
    (["train.betas=[a,b]"], "train.betas[0]: Value 'a' of type 'str' could not be converted to Float"),
])
def test_bad_input_is_one_line_naming_key_and_origin(overrides, message):
    with pytest.raises(HarnessError) as err:
        compose_runs(overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture
def jobs_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jobs = tmp_path / "jobs"
    shutil.copytree(compose.JOBS_DIR, jobs)
    monkeypatch.setattr(compose, "JOBS_DIR", jobs)
    return jobs


def test_a_bad_key_in_a_group_file_names_the_file(jobs_copy: Path):
    (jobs_copy / "model" / "wide.yaml").write_text("name: wide\nwidth: 3\n")
    with pytest.raises(HarnessError, match=r"^model.width: Key 'width' not in 'ModelConfig' \(jobs/model/wide.yaml\)$"):
        compose_runs(["model=wide"])


def test_a_wrong_type_in_a_group_file_names_the_file(jobs_copy: Path):
    (jobs_copy / "model" / "big.yaml").write_text("name: big\nd_model: huge\n")
    with pytest.raises(HarnessError, match=r"^model.d_model: Value 'huge'.*\(jobs/model/big.yaml\)$"):
        compose_runs(["model=big"])


def test_a_bad_choice_in_a_group_file_names_the_file(jobs_copy: Path):
    (jobs_copy / "model" / "odd.yaml").write_text("name: odd\npositional: spiral\n")
    with pytest.raises(HarnessError, match=r"model.positional: 'spiral' is not one of .* \(jobs/model/odd.yaml\)"):
        compose_runs(["model=odd"])


def test_a_cluster_profile_brings_its_default_scale_unless_overridden():
    assert compose_runs(["cluster=a100_8x8"])[0].config.scale == "paper"
    assert compose_runs(["cluster=a100_8x8", "scale=smoke"])[0].config.scale == "smoke"
    assert compose_runs(["cluster=a100_8x8"])[0].config.world_size == 64


def test_users_pick_a_profile_once_in_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "defaults.yaml").write_text("overrides: [cluster=slurm_ci, launch.account=t2i]\n")
    config = compose_runs([])[0].config
    assert (config.launch.cluster, config.launch.account) == ("slurm_ci", "t2i")
    assert compose_runs(["cluster=local"])[0].config.launch.cluster == "local"  # the command line wins
    monkeypatch.setenv("HARNESS_CLUSTER", "a100_8x8")
    assert compose_runs([])[0].config.launch.cluster == "a100_8x8"


def test_a_bad_user_default_names_the_defaults_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "defaults.yaml").write_text("overrides: [launch.nodes=many]\n")
    with pytest.raises(HarnessError, match=r"launch.nodes: .*\(user defaults .*defaults.yaml: launch.nodes=many\)"):
        compose_runs([])


def test_every_numeric_key_has_its_valid_values():
    """A new int or float key of the schema needs a range (or choices) in harness/config/validate.py."""
    missing = [k for k in validate.numeric_keys() if k not in validate.RANGES and k not in validate.CHOICES]
    assert not missing, f"give these keys a range in harness/config/validate.py: {missing}"
    assert set(validate.RANGES) | set(validate.CHOICES) <= set(validate.schema_keys())


@pytest.mark.parametrize("scale", ["micro", "smoke", "paper"])
def test_the_repos_own_experiments_are_valid_at_every_scale(scale):
    for experiment in list_experiments():
        assert compose_runs([f"experiment={experiment}", f"scale={scale}"])


@pytest.mark.parametrize("interval, inside, outside", [
    (validate.at_least(1), [1, 5], [0, -1, float("inf"), float("nan")]),
    (validate.POSITIVE, [1e-9, 3.0], [0, -1e-9, float("inf")]),
    (validate.between(0, 1, high_open=True), [0, 0.5], [1, -0.1]),
])
def test_ranges_include_their_ends_as_written(interval, inside, outside):
    assert all(v in interval for v in inside) and not any(v in interval for v in outside)
    assert str(validate.between(0, 1, high_open=True)) == "[0, 1)" and str(validate.POSITIVE) == "(0, inf)"
