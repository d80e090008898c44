"""Run identity: a short hash of everything that can change a run's results.

Launch-only settings (cluster, container, partition/account/qos, array parallelism, the data and
runs roots, TensorBoard/W&B logging) are left out so that the same experiment run on another
cluster keeps its id. The world size is kept (it changes the data order per rank and the reduction
order), and so is the hash of the data actually read. The upstream run of an init is part of
`init.source` once resolved.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from harness.config.compose import to_dict
from harness.config.schema import RunConfig

LAUNCH_ONLY_SECTIONS = ("launch", "container", "logging", "paths")
# Keys whose effect reaches a run only through a key that is itself in the identity (the train.steps
# of the experiment that interpolates them): leaving them out keeps every other run's id.
ONLY_THROUGH_OTHER_KEYS = ("random_init_long_steps",)
ID_LENGTH = 10
# Keys added after runs existed, at the value that trains exactly as before the key existed: left
# out at that value, so those runs keep their ids (and their directories stay findable).
NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {
    ("train", "text_loss_weight"): 1.0,
    ("data", "text_mix"): 0.0,
    ("eval", "language_fewshot"): {},
}


def identity_of(config: RunConfig, data_hash: str) -> dict[str, Any]:
    values = {k: v for k, v in to_dict(config).items() if k not in LAUNCH_ONLY_SECTIONS + ONLY_THROUGH_OTHER_KEYS}
    values = without_neutral_defaults(values)
    values["world_size"] = config.world_size
    values["data_hash"] = data_hash
    return values


def without_neutral_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that sit at their neutral value (a copy where one is removed)."""
    for (section, key), neutral in NEUTRAL_DEFAULTS.items():
        if key in values.get(section, {}) and values[section][key] == neutral:
            values = {**values, section: {k: v for k, v in values[section].items() if k != key}}
    return values


def run_id_of(config: RunConfig, data_hash: str) -> str:
    canonical = json.dumps(identity_of(config, data_hash), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_LENGTH]
