"""From a command line to concrete runs: compose, resolve upstream inits, find the data, name runs.

A plan lists runs in dependency order (an upstream run before the runs that start from it) and
writes nothing under the runs root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from harness.config import ComposedRun, RunConfig, compose_runs, list_experiments, run_id_of
from harness.data.dataset import NotRestored, check_not_empty, dataset_dir, describe, ensure_dataset
from harness.data.tokenize import load_text_tokenizer, raw_fingerprint, shard_tasks
from harness.errors import HarnessError
from harness.rundir import RunDir, RunState
from harness.train import model_file
from harness.train.sources import is_run_reference, resolve_alignment, resolve_source

# Overrides that an upstream run inherits from the command line: where and at what scale it runs,
# and on which data and architecture. Seeds and training settings belong to the downstream run.
INHERITED_GROUPS = ("scale", "model", "data", "cluster")
INHERITED_PREFIXES = ("model.", "paths.", "launch.", "data.")
# What the upstream reads is its own: its corpus, and no documents mixed into image-caption training.
NOT_INHERITED = ("data.corpus", "data.text_mix")


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


def plan(overrides: list[str], log=print, allow_missing_data: bool = False) -> list[PlannedRun]:
    """`allow_missing_data` (for --dry-run): an input under the data root that is not there yet (a
    dataset or model file `dvc pull` restores) gives provisional run ids and a warning instead of an
    error. Anything broken, or missing elsewhere, fails a dry run as it fails a submit."""
    planned: dict[Path, PlannedRun] = {}
    for composed in compose_runs(overrides):
        for item in _plan_one(composed, log, allow_missing_data):
            planned.setdefault(item.run.path, item)
    return list(planned.values())


def upstream_keys(config: RunConfig) -> list[str]:
    """The keys (`section.key`) that name another run this one starts from or evaluates."""
    if config.job in ("eval_image", "eval_language"):
        return ["eval.run"]
    keys = ["init.source"] if config.init.strategy in ("pretrained", "aligned") or config.job == "align" else []
    return keys + (["init.alignment"] if config.init.strategy == "aligned" else [])


def upstream_value(config: RunConfig, key: str) -> str | None:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _with_value(config: RunConfig, key: str, value) -> RunConfig:
    section, name = key.split(".")
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})


def _plan_one(composed: ComposedRun, log, allow_missing_data: bool = False) -> list[PlannedRun]:
    config = _absolute_paths(composed.config)
    _check_roots(config)
    if config.job == "tokenize":
        return _plan_tokenize(config, composed.overrides)
    if config.job in WORLD_JOBS:
        return _plan_world_job(config, composed.overrides)
    if config.job == "eval_language":
        from harness.eval.language import check_task_names

        check_task_names(config)
    upstream: list[PlannedRun] = []
    source: dict | None = None  # what the init.source weights assume, where it can be known now
    for key in upstream_keys(config):
        value = upstream_value(config, key)
        if value in list_experiments():
            upstream += _plan_one(_compose_upstream(value, composed.overrides), log, allow_missing_data)
            config = _with_value(config, key, upstream[-1].run.name)
            if key == "init.source":
                planned = upstream[-1]
                source = {"positional": planned.config.model.positional,
                          "text_tokenizer": planned.data.get("text_tokenizer")}
        else:
            config = _check_reference(config, key, log if allow_missing_data else None)
            if key == "init.source":
                source = _recorded_assumptions(config)
    _check_done_upstream_weights(config)
    _check_alignment_readable(config)
    if config.job != "train":
        config = _single_process(config)
    data = _data_of(config, log, allow_missing_data)
    if source is not None:
        _check_assumptions(config, source, data)
    return [*upstream, *_part_runs(config, composed.overrides, data)]


def _check_done_upstream_weights(config: RunConfig) -> None:
    """A done upstream run whose weights are gone (a clone of committed results, which keep no
    checkpoints) is refused here, not by every job that would start from it."""
    for key in upstream_keys(config):
        value = upstream_value(config, key) or ""
        if key == "eval.run" or not is_run_reference(value):
            continue
        upstream = RunDir(Path(config.paths.runs_root) / value)
        weights = resolve_source(config) if key == "init.source" else resolve_alignment(config)
        if upstream.state() == RunState.DONE and not weights.exists():
            raise HarnessError(f"{key}={value}: that run is done but its weights {weights} are missing "
                               "(checkpoints are not committed with results): restore them (dvc pull) "
                               f"or move {upstream.path} aside to train it again")


def _recorded_assumptions(config: RunConfig) -> dict | None:
    """What a done run's or a path's model file records (None for a released open_lm checkpoint,
    which records nothing, or a path not there yet on a dry run)."""
    path = resolve_source(config)
    if not (path.is_dir() or path.name == model_file.MODEL_FILE) or not path.exists():
        return None
    return model_file.recorded_assumptions(path)


def _check_assumptions(config: RunConfig, source: dict, data: dict) -> None:
    """A pre-trained init must start from weights trained with this run's positional type and text
    tokenizer: another tokenizer of the same size trains to DONE on text rows that mean other
    tokens. Files written before the tokenizer hash was recorded are checked on position only."""
    mine = {"positional": config.model.positional, "text_tokenizer": data.get("text_tokenizer")}
    for what, theirs in source.items():
        if theirs is not None and mine[what] is not None and theirs != mine[what]:
            raise HarnessError(f"init.source={config.init.source}: its weights were trained with {what} "
                               f"{theirs!r}, this run uses {mine[what]!r} (model.positional / the data's "
                               "text tokenizer); start from weights trained for this setting")


# Jobs that split into a job array of parts: the config section holding `parts` and `part`.
PARTED = {"tokenize": "tokenize", "eval_image": "eval"}


def _part_runs(config: RunConfig, overrides: tuple[str, ...], data: dict) -> list[PlannedRun]:
    """One run per part of a parted job (the parts become one job array); else the run itself."""
    section = PARTED.get(config.job)
    parts = getattr(config, section).parts if section else 1
    planned = []
    for part in range(parts):
        part_config = _with_value(config, f"{section}.part", part) if section else config
        run = RunDir.of(Path(config.paths.runs_root), config.experiment, run_id_of(part_config, data["hash"]))
        planned.append(PlannedRun(part_config, overrides, run, data))
    return planned


def _check_roots(config: RunConfig) -> None:
    """Both roots are directories (or not there yet: submit makes them)."""
    for key in ("runs_root", "data_root"):
        path = Path(getattr(config.paths, key))
        if path.exists() and not path.is_dir():
            raise HarnessError(f"paths.{key}={path}: not a directory")


def _data_of(config: RunConfig, log, allow_missing_data: bool) -> dict:
    try:
        dataset = ensure_dataset(config.data, Path(config.paths.data_root), log=log)
    except NotRestored as exc:  # not restored yet; a broken dataset fails a dry run too
        if not allow_missing_data:
            raise
        log(f"warning: {exc}; run ids below are provisional")
        return {"name": config.data.name, "hash": "missing"}
    if config.data.text_mix:  # the documents it mixes in: refused here (a dry run too), not on the cluster
        try:
            check_not_empty(dataset, "text", "train")
        except HarnessError as exc:
            raise HarnessError(f"data.text_mix={config.data.text_mix:g} needs pre-training documents: {exc}") from None
    if config.job == "train":  # an empty split would leave the trainer nothing to draw
        check_not_empty(dataset, config.data.corpus, "train")
    return describe(dataset)


def _check_reference(config: RunConfig, key: str, warn=None) -> RunConfig:
    """A named upstream run must be done; a path must exist (and is made absolute: tasks run
    elsewhere). Checked before anything is written."""
    value = upstream_value(config, key) or ""
    if is_run_reference(value):
        upstream = RunDir(Path(config.paths.runs_root) / value)
        if upstream.state() != RunState.DONE:
            raise HarnessError(f"{key}={value}: that run is {upstream.state().value}, not done "
                               f"(under {config.paths.runs_root})")
        return config
    if key == "eval.run" or not Path(value).exists():
        problem = (f"{key}={value!r}: not an experiment ({', '.join(list_experiments())}), "
                   "not <experiment>/<run_id>" + ("" if key == "eval.run" else ", and no such file"))
        # Only a file under the data root may be restored later (`dvc pull`: the released LM);
        # an eval.run names a run, never a file.
        if key == "eval.run" or not _under(Path(value), Path(config.paths.data_root)):
            raise HarnessError(problem)
        if warn is None:
            raise NotRestored(f"{problem} (restore it with `dvc pull data.dvc`)")
        warn(f"warning: {problem} (yet: restore it with `dvc pull data.dvc`)")
        return config
    return _with_value(config, key, str(Path(value).resolve()))


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _check_alignment_readable(config: RunConfig) -> None:
    """An aligned init's alignment file, where it exists, must load: a corrupt one is named here,
    not by the job. Memory-mapped, so a large one costs little."""
    if config.init.strategy != "aligned":
        return
    import torch

    from harness.train.align import ALIGNMENT_FILE

    path = resolve_alignment(config)
    path = path / ALIGNMENT_FILE if path.is_dir() else path
    if not path.is_file():
        return  # a run not trained yet (planned upstream) or not restored yet: checked where it is used
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise HarnessError(f"init.alignment: {path} is unreadable ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), dict):
        raise HarnessError(f"init.alignment: {path} holds no alignment rows: not written by experiment=align")


def _compose_upstream(experiment: str, overrides: tuple[str, ...]) -> ComposedRun:
    inherited = [o for o in overrides if _inherited(o.split("=", 1)[0].lstrip("+~"))]
    return compose_runs([f"experiment={experiment}", *inherited])[0]


def _inherited(key: str) -> bool:
    return key not in NOT_INHERITED and (key in INHERITED_GROUPS or key.startswith(INHERITED_PREFIXES))


def _absolute_paths(config: RunConfig) -> RunConfig:
    paths = dataclasses.replace(config.paths, runs_root=str(Path(config.paths.runs_root).resolve()),
                                data_root=str(Path(config.paths.data_root).resolve()))
    container = config.container
    if container.runtime == "apptainer":  # a SIF path, read on every node: not relative to their cwd
        container = dataclasses.replace(container, image=str(Path(container.image).resolve()))
    return dataclasses.replace(config, paths=paths, container=container)


# Jobs that read the synthetic world's images directly (drawn, not tokenized): the artifacts the
# datasets and evaluations are built with. Their identity covers the drawing, not a dataset.
WORLD_JOBS = ("train_tokenizer", "train_classifier")
WORLD_KEYS = ("name", "image_size", "codebook_size", "seed")


def _plan_world_job(config: RunConfig, overrides: tuple[str, ...]) -> list[PlannedRun]:
    if config.data.kind != "synthetic":
        raise HarnessError(f"experiment={config.experiment} trains on the synthetic world; data={config.data.name} "
                           "is not synthetic (paper scale uses the released SBER-MoVQGAN and Inception)")
    world = {key: getattr(config.data, key) for key in WORLD_KEYS}
    digest = hashlib.sha256(json.dumps(world, sort_keys=True).encode()).hexdigest()
    data = {"name": config.data.name, "hash": f"world-{digest[:16]}", "world": world}
    config = _single_process(config)
    # Publishing a run names its output in the configs; that must not make the run another one.
    unpublished = dataclasses.replace(
        config, data=dataclasses.replace(config.data, image_tokenizer="", image_tokenizer_sha256=""),
        eval=dataclasses.replace(config.eval, features="", features_sha256=""))
    run = RunDir.of(Path(config.paths.runs_root), config.experiment, run_id_of(unpublished, data["hash"]))
    return [PlannedRun(config, overrides, run, data)]


def _plan_tokenize(config: RunConfig, overrides: tuple[str, ...]) -> list[PlannedRun]:
    """Identity covers the raw shards read (the dataset is what the job makes). The text tokenizer
    is loaded once here: a missing or malformed one is refused before any part starts."""
    tasks = shard_tasks(config.data, Path(config.paths.data_root))
    load_text_tokenizer(config.data, Path(config.paths.data_root))
    fingerprint = raw_fingerprint(tasks)
    data = {"name": config.data.name, "hash": fingerprint, "raw_shards": len(tasks),
            "output": dataset_dir(config.data, Path(config.paths.data_root)).name}  # under the data root
    return _part_runs(_single_process(config), overrides, data)


def _single_process(config: RunConfig) -> RunConfig:
    """Tokenize and align tasks are one process each: one task, at most one GPU, whatever the
    cluster profile gives a training task."""
    launch = dataclasses.replace(config.launch, nodes=1, tasks_per_node=1,
                                 gpus_per_node=min(config.launch.gpus_per_node, 1))
    return dataclasses.replace(config, launch=launch)
