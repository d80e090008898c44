"""Where a pre-trained init comes from: an upstream run of this harness, or a model file path."""

from __future__ import annotations

import re
from pathlib import Path

from harness.config.schema import RunConfig
from harness.errors import HarnessError

# <experiment>/<run_id>; an experiment name as config/validate.py's NAME allows it.
RUN_REFERENCE = re.compile(r"^(?P<experiment>[A-Za-z0-9_][A-Za-z0-9_.-]*)/(?P<run_id>[0-9a-f]{6,})$")


def is_run_reference(source: str) -> bool:
    return RUN_REFERENCE.match(source) is not None


def resolve_source(config: RunConfig) -> Path:
    """The model file a pre-trained init loads: `<exp>/<run_id>` -> that run's final checkpoint."""
    return _resolve(config, "source")


def resolve_alignment(config: RunConfig) -> Path:
    """The alignment an aligned init loads, named the same ways."""
    return _resolve(config, "alignment")


def _resolve(config: RunConfig, key: str) -> Path:
    value = getattr(config.init, key)
    if not value:
        raise HarnessError(f"init.strategy={config.init.strategy} needs init.{key} (an experiment, "
                           "<exp>/<run_id> or a path)")
    if is_run_reference(value):
        return Path(config.paths.runs_root) / value / "checkpoints" / "final"
    return Path(value)


def load_source(config: RunConfig) -> dict:
    """The pre-trained LM as a model-file payload: a model file written by this harness, or the
    released open_lm checkpoint (`open_lm_1b.pt`), taken with this run's architecture and checked
    key by key against it."""
    import dataclasses

    import torch

    from harness.model.open_lm import Architecture, OpenLM
    from harness.model.released import check_keys, released_state_dict
    from harness.train import model_file

    path = resolve_source(config)
    if path.is_dir() or _written_here(path):
        return model_file.load_model_file(path)
    state = released_state_dict(path)
    if "tok_embeddings.weight" not in state:
        raise HarnessError(f"{path}: neither a model file of this harness nor an open_lm checkpoint")
    arch = Architecture.from_config(config.model, vocab_size=state["tok_embeddings.weight"].shape[0])
    with torch.device("meta"):
        expected = OpenLM(arch).state_dict()
    check_keys(state, expected, path)
    return {"state_dict": state, "architecture": dataclasses.asdict(arch)}


def _written_here(path: Path) -> bool:
    from harness.train import model_file

    return path.name == model_file.MODEL_FILE
