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

from harness.config.schema import RunConfig
from harness.errors import HarnessError

# jobs/ sits beside the package in a checkout; an image may place it elsewhere.
JOBS_DIR = Path(os.environ.get("HARNESS_JOBS_DIR", Path(__file__).resolve().parents[2] / "jobs"))
# In the order Hydra applies them (jobs/config.yaml): a later group overrides an earlier one.
GROUPS = ("model", "data", "scale", "cluster", "experiment")
SCHEMA_NAME = "harness_schema"

# Keys whose value must be one of a fixed set; checked after composition.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.positional": ("rotary", "head_rotary", "none"),
    "model.attention": ("sdpa", "flash", "efficient", "math"),
    "model.init": ("open_lm", "normal"),
    "eval.fid_mode": ("clean", "legacy_tensorflow"),
    "job": ("train", "tokenize", "align", "eval_image", "eval_language", "train_tokenizer", "train_classifier"),
    "data.kind": ("synthetic", "prebuilt"),
    "data.raw.source": ("urls", "shapes", "external"),
    "data.tokenizer.image_variant": ("67M", "102M", "270M", "tiny"),
    "data.corpus": ("captions", "text", "images", "caption_text"),
    "init.strategy": ("random", "pretrained", "aligned"),
    "train.precision": ("fp32", "bf16"),
    # ZeRO-3 would partition parameters; the final model file is written from whole ones on rank 0.
    "train.zero_stage": (0, 1, 2),
    "train.preempt_signal": ("USR1", "USR2", "TERM", "INT", "HUP"),
    "launch.executor": ("local", "slurm"),
    "container.runtime": ("none", "apptainer", "docker", "podman"),
    "logging.wandb_mode": ("online", "offline", "disabled"),
}

# Keys whose value must lie in a range: (low, high, whether low itself is allowed); high excluded.
RANGES: dict[str, tuple[float, float, bool]] = {
    "train.text_loss_weight": (0.0, float("inf"), False),
    "data.text_mix": (0.0, 1.0, True),
}

ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


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


def expand_aliases(overrides: list[str]) -> list[str]:
    return [f"{ALIASES[_key(o)]}={o.split('=', 1)[1]}" if _key(o) in ALIASES and "=" in o else o
            for o in overrides]


def expand_groups(overrides: list[str]) -> list[str]:
    """Replace `experiment=<group>` by the group's overrides; the command line's own keys win."""
    for index, text in enumerate(overrides):
        if _key(text) == "experiment" and text.split("=", 1)[1] in list_groups():
            path = JOBS_DIR / "group" / f"{text.split('=', 1)[1]}.yaml"
            listed = (yaml.safe_load(path.read_text()) or {}).get("overrides", [])
            given = {_key(o) for i, o in enumerate(overrides) if i != index}
            return [o for o in listed if _key(o) not in given] + overrides[:index] + overrides[index + 1:]
    return overrides


@functools.lru_cache(maxsize=None)
def scale_defaults(scale: str) -> dict[str, str]:
    """The model and data a scale selects (`override /model: smoke` in jobs/scale/<scale>.yaml)."""
    path = JOBS_DIR / "scale" / f"{scale}.yaml"
    if not path.exists():
        return {}
    chosen = {}
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                chosen[key.split("/")[-1].strip()] = str(value)
    return chosen


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (JOBS_DIR / group).glob("*.yaml"))


def compose_runs(overrides: Iterable[str]) -> list[ComposedRun]:
    """Expand sweeps and compose each resulting override list into a validated RunConfig.

    The user's defaults (HARNESS_CLUSTER, ~/.config/harness/defaults.yaml) come first; an override
    on the command line for the same key replaces them.
    """
    overrides = expand_groups(with_user_defaults(expand_aliases(list(overrides))))
    return [_compose_one(list(combo)) for combo in expand_sweeps(overrides)]


def user_defaults_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "harness" / "defaults.yaml"


def user_defaults() -> list[str]:
    """Overrides a user sets once: `overrides: [cluster=a100_8x8, launch.account=...]` in the
    defaults file, and HARNESS_CLUSTER=<profile> in the environment (the environment wins)."""
    defaults: list[str] = []
    path = user_defaults_file()
    if path.exists():
        try:
            content = yaml.safe_load(path.read_text()) or {}
            listed = content.get("overrides", [])
            if not isinstance(listed, list):
                raise AttributeError("overrides is not a list")
            defaults = [str(o) for o in listed]
        except (yaml.YAMLError, AttributeError) as exc:
            raise HarnessError(f"{path}: expected `overrides: [key=value, ...]` ({_first_line(exc)})") from None
    if os.environ.get("HARNESS_CLUSTER"):
        defaults = [o for o in defaults if _key(o) != "cluster"] + [f"cluster={os.environ['HARNESS_CLUSTER']}"]
    return defaults


def with_user_defaults(overrides: list[str]) -> list[str]:
    given = {_key(o) for o in overrides}
    return [o for o in user_defaults() if _key(o) not in given] + overrides


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand_sweeps(overrides: list[str]) -> list[tuple[str, ...]]:
    parsed = _parse(overrides)
    axes: list[list[str]] = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            key = override.get_key_element()
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([text])
    return list(itertools.product(*axes))


def load_run_config(path: Path) -> RunConfig:
    """Read a resolved config.yaml written at submit; jobs never compose again."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    except OmegaConfBaseException as exc:
        raise HarnessError(f"{path}: {getattr(exc, 'full_key', '')}: {_first_line(exc)}") from None
    return OmegaConf.to_object(merged)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _parse(overrides: list[str]):
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise HarnessError(f"cannot parse override: {_first_line(exc)}") from None


def _compose_one(overrides: list[str]) -> ComposedRun:
    for override in _parse(overrides):
        _check_override_key(override.get_key_element().lstrip("+~"))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(JOBS_DIR), version_base=None):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as exc:
        raise HarnessError(_explain_hydra_error(exc, overrides)) from None
    choices = {g: str(cfg.hydra.runtime.choices.get(g)) for g in GROUPS}
    with open_dict(cfg):
        del cfg["hydra"]
    config: RunConfig = OmegaConf.to_object(cfg)
    _check_choices(config, overrides, choices)
    _check_ranges(config, overrides, choices)
    _check_freeze(config, overrides, choices)
    return ComposedRun(tuple(overrides), config, choices)


def _check_override_key(key: str) -> None:
    if key in GROUPS:
        return
    node: Any = RunConfig
    for part in key.split("."):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            valid = ", ".join(hints) if hints else "none (not a section)"
            raise HarnessError(f"unknown key '{key}' (command line); valid keys here: {valid}")
        node = hints[part]


def _check_choices(config: RunConfig, overrides: list[str], choices: dict[str, str]) -> None:
    flat = _flatten(to_dict(config))
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            origin = origin_of(key, overrides, choices)
            raise HarnessError(
                f"{key}: '{flat[key]}' is not one of {', '.join(map(str, allowed))} ({origin})"
            )


def _check_ranges(config: RunConfig, overrides: list[str], choices: dict[str, str]) -> None:
    flat = _flatten(to_dict(config))
    for key, (low, high, low_allowed) in RANGES.items():
        value = flat[key]
        if not (low < value < high or (low_allowed and value == low)):
            interval = f"{'[' if low_allowed else '('}{low:g}, {high:g})"
            raise HarnessError(f"{key}: {value} is outside {interval} ({origin_of(key, overrides, choices)})")
    # Both knobs act on image-caption training only; elsewhere they would change a run id and nothing else.
    for key, neutral in (("train.text_loss_weight", 1.0), ("data.text_mix", 0.0)):
        if flat[key] != neutral and (config.job != "train" or config.data.corpus != "captions"):
            raise HarnessError(f"{key}: acts on image-caption training only; this is job '{config.job}' on "
                               f"data.corpus '{config.data.corpus}' ({origin_of(key, overrides, choices)})")


def _check_freeze(config: RunConfig, overrides: list[str], choices: dict[str, str]) -> None:
    if not config.freeze:
        return
    from harness.model.freeze import FreezeError, check_parts  # torch: only when freezing

    try:
        check_parts(config.freeze, config.model.n_layers)
    except FreezeError as exc:
        raise HarnessError(f"freeze: {exc} ({origin_of('freeze', overrides, choices)})") from None


def origin_of(key: str, overrides: list[str], choices: dict[str, str]) -> str:
    """Where a key's value came from: the command line, or the last group file that sets it."""
    for text in overrides:
        if _key(text) == key:
            return _override_origin(text)
    for group in reversed(GROUPS):
        path = JOBS_DIR / group / f"{choices.get(group)}.yaml"
        if path.exists() and key in _flatten(_file_values(path, group)):
            return str(path.relative_to(JOBS_DIR.parent))
    return "schema default in harness/config/schema.py"


def _file_values(path: Path, group: str) -> dict[str, Any]:
    text = path.read_text()
    values = yaml.safe_load(text) or {}
    values.pop("defaults", None)
    match = re.search(r"^# @package (\S+)", text, re.MULTILINE)
    package = match.group(1) if match else group
    return values if package == "_global_" else {package: values}


def _explain_hydra_error(exc: HydraException, overrides: list[str]) -> str:
    text = str(exc)
    group_miss = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if group_miss:
        group, name = group_miss.groups()
        return f"unknown {group} '{name}' (command line); valid: {', '.join(group_options(group))}"
    cause = exc.__cause__
    if cause is not None and getattr(cause, "full_key", None):
        bad = next((o for o in overrides if cause.full_key.startswith(_key(o))), None)
        return f"{cause.full_key}: {_first_line(cause)} ({_override_origin(bad) if bad else 'command line'})"
    in_file = re.search(r"In '([^']+)': \w+ raised while composing config:\n(.*)\n\s*full_key: (\S+)", text)
    if in_file:
        where, message, key = in_file.groups()
        return f"{key}: {message.strip()} (jobs/{where}.yaml)"
    return _first_line(exc)


def _override_origin(text: str) -> str:
    where = f"user defaults {user_defaults_file()}" if text in user_defaults() else "command line"
    return f"{where}: {text}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
