"""`harness export`: one consolidated fp32 model file from a run's (ZeRO-sharded) checkpoint,
loadable on any world size: for evaluation jobs, `init.source` and versioning."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.rundir import RunDir
from harness.train import checkpoints
from harness.train.model_file import save_model_file


def export(run: RunDir, step: int | None = None, target: Path | None = None) -> Path:
    """Consolidate the checkpoint at `step` (default: the newest complete one) into a model file."""
    path = _checkpoint(run, step)
    client = json.loads((path / checkpoints.CLIENT).read_text())
    state = consolidated_state_dict(path)
    target = target or run.checkpoints / f"export-{path.name}"
    return save_model_file(target, state, client["architecture"], client["layout"], client["step"],
                           client["tokens"], client.get("text_tokenizer"))


def consolidated_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights (and buffers) from one DeepSpeed checkpoint directory, on the CPU."""
    client = json.loads((path / checkpoints.CLIENT).read_text())
    saved = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    module = {key.removeprefix("module."): value for key, value in saved.items()}
    if client.get("zero_stage", 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # The optimizer's fp32 partitions hold every trained parameter; frozen ones (requires_grad
        # off, e.g. freeze=[ffn]) have none and keep their never-updated value in the module file.
        trained = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
        module.update({key.removeprefix("module."): value for key, value in trained.items()})
    return {key: value.float() for key, value in module.items()}


def _checkpoint(run: RunDir, step: int | None) -> Path:
    if step is None:
        found = checkpoints.choose(run.checkpoints, log=lambda _msg: None)
        if found is None:
            raise HarnessError(f"{run.name} has no complete checkpoint under {run.checkpoints}")
        return found
    path = run.checkpoints / checkpoints.tag_of(step)
    problem = checkpoints.verify(path) if path.exists() else f"no checkpoint at step {step}"
    if problem:
        available = [p.name for p in checkpoints.complete(run.checkpoints)]
        raise HarnessError(f"{run.name}: {problem}; complete checkpoints: {', '.join(available) or 'none'}")
    return path
