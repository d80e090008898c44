"""The trained run an evaluation job scores, and its model at a step."""

from __future__ import annotations


import torch

from harness.config.schema import RunConfig
from harness.errors import HarnessError
from harness.model.open_lm import Architecture, OpenLM
from harness.rundir import RunDir
from harness.train import model_file


def trained_config(target: RunDir) -> RunConfig:
    from harness.config import load_run_config

    if not target.done_path.exists():
        raise HarnessError(f"eval.run={target.name}: that run is {target.state().value}, not done")
    return load_run_config(target.config_path)


def load_model(target: RunDir, step: int, device: torch.device) -> tuple[OpenLM, int]:
    """The final model (step 0 = final), or the model exported at a kept checkpoint's step."""
    path = target.checkpoints / ("final" if not step else f"export@{step}")
    if step and not (path / model_file.COMPLETE).exists():
        from harness.train.export import export

        export(target, step, path)
    payload = model_file.load_model_file(path)
    model = OpenLM(Architecture(**payload["architecture"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload.get("step", step)
