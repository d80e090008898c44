"""Compose run configs from jobs/ with Hydra's compose API (never its launcher).

`experiment=X key=value` selects and overrides; `key=a,b` (or Hydra's range/choice syntax) is a
sweep and expands into one run per combination. Every error is a HarnessError naming the key and
the file (or the command line) it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from harness.config import validate
from harness.config.schema import RunConfig
from harness.errors import HarnessError, first_line

# jobs/ sits beside the package in a checkout; an image may place it elsewhere.
JOBS_DIR = Path(os.environ.get("HARNESS_JOBS_DIR", Path(__file__).resolve().parents[2] / "jobs"))
# In the order Hydra applies them (jobs/config.yaml): a later group overrides an earlier one.
GROUPS = ("model", "data", "scale", "cluster", "experiment")
SCHEMA_NAME = "harness_schema"


def _schema_node() -> Any:
    """The schema Hydra composes onto. A mapping field (eval.language_fewshot) takes the user's own
    keys, so it is not a struct: `eval.language_fewshot={arc_easy: 5}` sets it."""
    node = OmegaConf.structured(RunConfig)
    for key, kind in validate.schema_fields():
        if typing.get_origin(kind) is dict:
            OmegaConf.set_struct(OmegaConf.select(node, key), False)
    return node


ConfigStore.instance().store(name=SCHEMA_NAME, node=_schema_node())


@dataclass(frozen=True)
class ComposedRun:
    """One run of a (possibly swept) command line: its overrides, config and group choices."""

    overrides: tuple[str, ...]
    config: RunConfig
    choices: dict[str, str]


def list_experiments() -> list[str]:
    return group_options("experiment")


def list_groups() -> list[str]:
    """Named sets of experiments (jobs/group/): `experiment=<group>` submits them together."""
    return group_options("group")


# Short forms of the command line: `harness submit experiment=eval_image run=<exp>/<id> step=N`.
ALIASES = {"run": "eval.run", "step": "eval.step"}
COMMAND_LINE = "command line"
CLUSTER_VARIABLE = "HARNESS_CLUSTER"

# Where each override's key was set: "command line", "user defaults <file>", the environment
# variable, or the jobs/group/ file that listed it. Error messages name it.
Origins = dict[str, str]


def expand_aliases(overrides: list[str]) -> list[str]:
    return [f"{ALIASES[_key(o)]}={o.split('=', 1)[1]}" if _key(o) in ALIASES and "=" in o else o
            for o in overrides]


def expand_groups(overrides: list[str], where: Origins | None = None) -> list[str]:
    """Replace `experiment=<group>` by the group's overrides; the command line's own keys win.
    A group inside a sweep (`experiment=<group>,<experiment>`) is refused: its own sweeps would
    multiply with the command line's."""
    where = {} if where is None else where
    for index, text in enumerate(overrides):
        if _key(text) != "experiment" or "=" not in text:
            continue
        value = text.split("=", 1)[1]
        if value not in list_groups():
            _refuse_swept_group(text, where)
            continue
        path = JOBS_DIR / "group" / f"{value}.yaml"
        listed = read_jobs_file(path).get("overrides", [])
        if not isinstance(listed, list) or not all(isinstance(o, str) for o in listed):
            raise HarnessError(f"{_relative(path)}: expected `overrides: [key=value, ...]`")
        given = {_key(o) for i, o in enumerate(overrides) if i != index}
        where.update({_key(o): _relative(path) for o in listed if _key(o) not in given})
        return [o for o in listed if _key(o) not in given] + overrides[:index] + overrides[index + 1:]
    return overrides


def _refuse_swept_group(text: str, where: Origins) -> None:
    (override,) = _parse([text], where)
    if not override.is_sweep_override():
        return
    groups = [v for v in override.sweep_string_iterator() if v in list_groups()]
    if groups:
        path = _relative(JOBS_DIR / "group" / f"{groups[0]}.yaml")
        raise HarnessError(f"experiment: '{groups[0]}' is a group of experiments ({path}), which cannot be part "
                           f"of a sweep; submit it on its own, experiment={groups[0]} ({_origin(text, where)})")


@functools.lru_cache(maxsize=None)
def scale_defaults(scale: str) -> dict[str, str]:
    """The model and data a scale selects (`override /model: smoke` in jobs/scale/<scale>.yaml)."""
    path = JOBS_DIR / "scale" / f"{scale}.yaml"
    if not path.exists():
        return {}
    chosen = {}
    for entry in read_jobs_file(path).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                chosen[key.split("/")[-1].strip()] = str(value)
    return chosen


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (JOBS_DIR / group).glob("*.yaml"))


def read_jobs_file(path: Path) -> dict[str, Any]:
    """A YAML file under jobs/ as a mapping; a syntax error names the file and line."""
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HarnessError(_yaml_problem(exc, path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{_relative(path)}: unreadable ({type(exc).__name__}: {exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise HarnessError(f"{_relative(path)}: expected a mapping of keys, found a {type(values).__name__}")
    return values


def compose_runs(overrides: Iterable[str]) -> list[ComposedRun]:
    """Expand sweeps and compose each resulting override list into a validated RunConfig.

    The user's defaults (HARNESS_CLUSTER, ~/.config/harness/defaults.yaml) come first; an override
    on the command line for the same key replaces them.
    """
    given = expand_aliases(list(overrides))
    where: Origins = {_key(o): origin for o, origin in user_default_origins().items()}
    where.update({_key(o): COMMAND_LINE for o in given})
    overrides = expand_groups(with_user_defaults(given), where)
    return [_compose_one(list(combo), where) for combo in expand_sweeps(overrides, where)]


def user_defaults_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "harness" / "defaults.yaml"


def user_defaults() -> list[str]:
    """Overrides a user sets once: `overrides: [cluster=a100_8x8, launch.account=...]` in the
    defaults file, and HARNESS_CLUSTER=<profile> in the environment (the environment wins)."""
    return list(user_default_origins())


def user_default_origins() -> dict[str, str]:
    """The user's default overrides, each with where it was set."""
    origins: dict[str, str] = {}
    path = user_defaults_file()
    if path.exists():
        origins = {text: f"user defaults {path}" for text in _read_defaults_file(path)}
    if os.environ.get(CLUSTER_VARIABLE):
        origins = {o: w for o, w in origins.items() if _key(o) != "cluster"}
        origins[f"cluster={os.environ[CLUSTER_VARIABLE]}"] = f"environment variable {CLUSTER_VARIABLE}"
    return origins


def _read_defaults_file(path: Path) -> list[str]:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HarnessError(_yaml_problem(exc, path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    listed = content.get("overrides", []) if isinstance(content, dict) else None
    if not isinstance(listed, list):
        raise HarnessError(f"{path}: expected `overrides: [key=value, ...]` (overrides is not a list)")
    return [str(o) for o in listed]


def with_user_defaults(overrides: list[str]) -> list[str]:
    given = {_key(o) for o in overrides}
    return [o for o in user_defaults() if _key(o) not in given] + overrides


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_sweeps(overrides: list[str], where: Origins | None = None) -> list[tuple[str, ...]]:
    parsed = _parse(overrides, where)
    axes: list[list[str]] = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            if not axes[-1]:
                raise HarnessError(f"{key}: the sweep is empty, nothing to run ({_origin(text, where)})")
        else:
            axes.append([text])
    return list(itertools.product(*axes))


def load_run_config(path: Path) -> RunConfig:
    """Read a resolved config.yaml written at submit; jobs never compose again."""
    try:
        loaded = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), loaded)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise HarnessError(f"{path}: {getattr(exc, 'full_key', '')}: {first_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise HarnessError(_yaml_problem(exc, path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HarnessError(f"{path}: unreadable run config ({type(exc).__name__}: {first_line(exc)})") from None


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _parse(overrides: list[str], where: Origins | None = None) -> list:
    """Hydra's parse of each override; a syntax error names the override and where it was set."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as exc:
            raise HarnessError(f"cannot parse {text!r} ({_where(text, where)}): {first_line(exc)}") from None
    return parsed


def _compose_one(overrides: list[str], where: Origins | None = None) -> ComposedRun:
    for override in _parse(overrides, where):
        _check_override_key(override.get_key_element().lstrip("+~"), override.input_line or "", where)
    _check_group_choices(overrides, where)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(JOBS_DIR), version_base=None):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as exc:
        raise HarnessError(_explain_hydra_error(exc, overrides, where)) from None
    except yaml.YAMLError as exc:  # a jobs/ file Hydra could not read
        raise HarnessError(_yaml_problem(exc)) from None
    choices = {g: str(cfg.hydra.runtime.choices.get(g)) for g in GROUPS}
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        config: RunConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:  # e.g. an interpolation to a key that does not exist
        key = getattr(exc, "full_key", "") or "config"
        raise HarnessError(f"{key}: {first_line(exc)} ({origin_of(key, overrides, choices, where)})") from None
    try:
        validate.check(config)
    except validate.Invalid as exc:
        raise HarnessError(f"{exc} ({_origins(exc.keys, overrides, choices, where)})") from None
    return ComposedRun(tuple(overrides), config, choices)


def _check_override_key(key: str, text: str, where: Origins | None) -> None:
    if key in GROUPS:
        return
    node: Any = RunConfig
    for part in key.split("."):
        if typing.get_origin(node) is dict:  # a mapping's keys are the user's (eval.language_fewshot.<task>)
            return
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            valid = ", ".join(hints) if hints else "none (not a section)"
            origin = _origin(text, where) if text else _where(key, where)
            raise HarnessError(f"unknown key '{key}' ({origin}); valid keys here: {valid}")
        node = hints[part]


def _check_group_choices(overrides: list[str], where: Origins | None) -> None:
    """A group's value must name one of its files (checked before Hydra, whose message for an empty
    or unknown value names neither the override nor where it was set)."""
    for text in overrides:
        key = _key(text)
        if key not in GROUPS or text.startswith("~") or "=" not in text:
            continue
        value, valid = text.split("=", 1)[1], group_options(key)
        if value in valid:
            continue
        problem = f"no {key} given" if not value.strip() else f"unknown {key} '{value}'"
        hint = f"; {value} is a group: submit it on its own" if key == "experiment" and value in list_groups() else ""
        raise HarnessError(f"{problem} ({_origin(text, where)}); valid: {', '.join(valid)}{hint}")


def _origins(keys: tuple[str, ...], overrides: list[str], choices: dict[str, str], where: Origins | None) -> str:
    if len(keys) == 1:
        return origin_of(keys[0], overrides, choices, where)
    return "; ".join(f"{key}: {origin_of(key, overrides, choices, where)}" for key in keys)


def origin_of(key: str, overrides: list[str], choices: dict[str, str], where: Origins | None = None) -> str:
    """Where a key's value came from: the command line (or a user default), or the last group file
    that sets it. `experiment=` and `scale=` select files; the fields of those names come from them."""
    for text in overrides:
        if _key(text) == key and key not in GROUPS:
            return _origin(text, where)
    for text in overrides:  # a key within it (a mapping's item), or the section holding it
        given = _key(text)
        if given not in GROUPS and (given.startswith(f"{key}.") or key.startswith(f"{given}.")):
            return _origin(text, where)
    for group in reversed(GROUPS):
        path = JOBS_DIR / group / f"{choices.get(group)}.yaml"
        if path.exists() and key in _flatten(_file_values(path, group)):
            return _relative(path)
    return "schema default in harness/config/schema.py"


def _file_values(path: Path, group: str) -> dict[str, Any]:
    values = dict(read_jobs_file(path))
    values.pop("defaults", None)
    match = re.search(r"^# @package (\S+)", path.read_text(), re.MULTILINE)
    package = match.group(1) if match else group
    return values if package == "_global_" else {package: values}


def _explain_hydra_error(exc: HydraException, overrides: list[str], where: Origins | None = None) -> str:
    text = str(exc)
    group_miss = re.search(r"Could not find '(\w+)/([^']*)'", text)
    if group_miss:
        group, name = group_miss.groups()
        given = next((o for o in overrides if _key(o) == group), None)
        origin = _origin(given, where) if given else "a defaults list under jobs/"
        return f"unknown {group} '{name}' ({origin}); valid: {', '.join(group_options(group))}"
    cause = exc.__cause__
    if cause is not None and getattr(cause, "full_key", None):
        bad = next((o for o in overrides if cause.full_key.startswith(_key(o))), None)
        return f"{cause.full_key}: {first_line(cause)} ({_origin(bad, where) if bad else COMMAND_LINE})"
    in_file = re.search(r"In '([^']+)': \w+ raised while composing config:\n(.*)\n\s*full_key: (\S+)", text)
    if in_file:
        where_file, message, key = in_file.groups()
        return f"{key}: {message.strip()} (jobs/{where_file}.yaml)"
    return first_line(exc)


def _where(text: str, where: Origins | None) -> str:
    """Where an override was set: the command line, a user default, a group file."""
    return (where or {}).get(_key(text), COMMAND_LINE)


def _origin(text: str, where: Origins | None) -> str:
    return f"{_where(text, where)}: {text}"


def _yaml_problem(exc: yaml.YAMLError, path: Path | None = None) -> str:
    """A YAML syntax error as one line: the file (relative to the checkout when under jobs/), the line."""
    mark = getattr(exc, "problem_mark", None)
    name = _relative(Path(mark.name)) if mark is not None and mark.name and not mark.name.startswith("<") else None
    name = _relative(path) if path is not None else name or "a jobs/ file"
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or first_line(exc)
    return f"{name}: not valid YAML: {problem}{at}"


def _relative(path: Path) -> str:
    """A path under jobs/ as jobs/<group>/<file> (what a user edits); any other path as it is."""
    try:
        return str(Path(JOBS_DIR.name) / path.resolve().relative_to(JOBS_DIR.resolve()))
    except ValueError:
        return str(path)


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
