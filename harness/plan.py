"""From a command line to concrete runs: compose, resolve upstream inits, find the data, name runs.

A plan lists runs in dependency order (an upstream run before the runs that start from it) and
writes nothing under the runs root.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.config import ComposedRun, RunConfig, compose_runs, list_experiments, run_id_of
from harness.data.dataset import dataset_dir, describe, ensure_dataset
from harness.data.tokenize import raw_fingerprint, shard_tasks
from harness.errors import HarnessError
from harness.rundir import RunDir, RunState
from harness.train.sources import is_run_reference

# Overrides that an upstream run inherits from the command line: where and at what scale it runs,
# and on which data and architecture. Seeds and training settings belong to the downstream run.
INHERITED_GROUPS = ("scale", "model", "data", "cluster")
INHERITED_PREFIXES = ("model.", "paths.", "launch.", "data.")
NOT_INHERITED = ("data.corpus",)


@dataclass(frozen=True)
class PlannedRun:
    config: RunConfig
    overrides: tuple[str, ...]
    run: RunDir
    data: dict  # provenance of what the run reads: the dataset (train) or the raw shards (tokenize)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def state(self) -> RunState:
        return self.run.state()

    def data_provenance(self) -> dict:
        return self.data


def plan(overrides: list[str], log=print) -> list[PlannedRun]:
    planned: dict[Path, PlannedRun] = {}
    for composed in compose_runs(overrides):
        for item in _plan_one(composed, log):
            planned.setdefault(item.run.path, item)
    return list(planned.values())


def _plan_one(composed: ComposedRun, log) -> list[PlannedRun]:
    config = _absolute_paths(composed.config)
    if config.job == "tokenize":
        return _plan_tokenize(config, composed.overrides)
    upstream: list[PlannedRun] = []
    if config.init.strategy == "pretrained" and config.init.source in list_experiments():
        upstream = _plan_one(_compose_upstream(config.init.source, composed.overrides), log)
        reference = upstream[-1].run.name
        config = dataclasses.replace(config, init=dataclasses.replace(config.init, source=reference))
    elif config.init.strategy == "pretrained":
        _check_source(config)
    dataset = ensure_dataset(config.data, Path(config.paths.data_root), log=log)
    run_id = run_id_of(config, dataset.data_hash)
    run = RunDir.of(Path(config.paths.runs_root), config.experiment, run_id)
    return [*upstream, PlannedRun(config, composed.overrides, run, describe(dataset))]


def _plan_tokenize(config: RunConfig, overrides: tuple[str, ...]) -> list[PlannedRun]:
    """One run per part (the parts become one job array); identity covers the raw shards read."""
    tasks = shard_tasks(config.data, Path(config.paths.data_root))
    fingerprint = raw_fingerprint(tasks)
    data = {"name": config.data.name, "hash": fingerprint, "raw_shards": len(tasks),
            "output": str(dataset_dir(config.data, Path(config.paths.data_root)))}
    # One process per part: at most one GPU, whatever the cluster profile gives a training task.
    launch = dataclasses.replace(config.launch, gpus_per_node=min(config.launch.gpus_per_node, 1))
    planned = []
    for part in range(config.tokenize.parts):
        part_config = dataclasses.replace(config, launch=launch,
                                          tokenize=dataclasses.replace(config.tokenize, part=part))
        run = RunDir.of(Path(config.paths.runs_root), config.experiment, run_id_of(part_config, fingerprint))
        planned.append(PlannedRun(part_config, overrides, run, data))
    return planned


def _check_source(config: RunConfig) -> None:
    """A named upstream run must be done; a path must exist. Checked before anything is written."""
    source = config.init.source or ""
    if is_run_reference(source):
        upstream = RunDir(Path(config.paths.runs_root) / source)
        if upstream.state() != RunState.DONE:
            raise HarnessError(f"init.source={source}: that run is {upstream.state().value}, not done "
                               f"(under {config.paths.runs_root})")
    elif not Path(source).exists():
        raise HarnessError(f"init.source={source!r}: not an experiment ({', '.join(list_experiments())}), "
                           "not <experiment>/<run_id>, and no such file")


def _compose_upstream(experiment: str, overrides: tuple[str, ...]) -> ComposedRun:
    inherited = [o for o in overrides if _inherited(o.split("=", 1)[0].lstrip("+~"))]
    return compose_runs([f"experiment={experiment}", *inherited])[0]


def _inherited(key: str) -> bool:
    return key not in NOT_INHERITED and (key in INHERITED_GROUPS or key.startswith(INHERITED_PREFIXES))


def _absolute_paths(config: RunConfig) -> RunConfig:
    paths = dataclasses.replace(config.paths, runs_root=str(Path(config.paths.runs_root).resolve()),
                                data_root=str(Path(config.paths.data_root).resolve()))
    return dataclasses.replace(config, paths=paths)
