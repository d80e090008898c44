"""Resumable DeepSpeed checkpoints of a run: `checkpoints/step<NNNNNNNN>/`.

Each holds DeepSpeed's model, optimizer and scheduler states (ZeRO shards included), `client.json`
(step, tokens, data position, world size, architecture, vocabulary layout) and one RNG file per
rank. It counts only once `COMPLETE` is written, last, by rank 0 after every rank has saved; the
marker lists each file's size, so a truncated file is found before it is loaded. Pruning keeps the
last `keep_last`, every checkpoint taken at a `keep_at_tokens` count, and the final one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"
CLIENT = "client.json"
TAG = re.compile(r"^step(\d{8})$")


def tag_of(step: int) -> str:
    return f"step{step:08d}"


@dataclass(frozen=True)
class Resume:
    step: int = 0
    tokens: int = 0


class CheckpointError(RuntimeError):
    pass


def save(engine, directory: Path, step: int, tokens: int, client: dict[str, Any], keep: bool) -> Path:
    """All ranks call this together; returns the checkpoint directory once it is complete."""
    tag = tag_of(step)
    state = {**client, "step": step, "tokens": tokens, "keep": keep, "world_size": dist.get_world_size()}
    engine.save_checkpoint(str(directory), tag=tag, client_state={"harness": state}, save_latest=False)
    path = directory / tag
    torch.save(_rng_state(), path / f"rng.rank{dist.get_rank()}.pt")
    _test_kill_while_saving(step)
    dist.barrier()
    if dist.get_rank() == 0:
        (path / CLIENT).write_text(json.dumps(state, indent=1) + "\n")
        sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != COMPLETE}
        partial = path / f"{COMPLETE}.partial"
        partial.write_text(json.dumps(sizes, indent=1) + "\n")
        os.replace(partial, path / COMPLETE)
    dist.barrier()
    return path


def _test_kill_while_saving(step: int) -> None:
    """Test hook: HARNESS_KILL_IN_SAVE_AT_STEP=<n> SIGKILLs rank 0 once step n's files are written and
    before its marker is: a node lost in the middle of a save."""
    if os.environ.get("HARNESS_KILL_IN_SAVE_AT_STEP") == str(step) and dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def verify(path: Path) -> str | None:
    """Why a checkpoint directory cannot be loaded, or None if it is complete and whole."""
    marker = path / COMPLETE
    if not marker.exists():
        return f"{path} is incomplete (no {COMPLETE} marker: interrupted while saving)"
    try:
        sizes = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return f"{marker} is unreadable"
    for name, size in sizes.items():
        file = path / name
        if not file.exists():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} is truncated ({file.stat().st_size} bytes, {size} when saved)"
    return None


def complete(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if TAG.match(p.name) and (p / COMPLETE).exists())


def choose(directory: Path, log) -> Path | None:
    """The newest loadable checkpoint; every one passed over is named with its reason."""
    candidates = sorted((p for p in directory.iterdir() if TAG.match(p.name)), reverse=True) if directory.is_dir() else []
    for path in candidates:
        problem = verify(path)
        if problem is None:
            return path
        log(f"not resuming from {path.name}: {problem}")
    return None


def resume(engine, directory: Path, world_size: int, log) -> Resume:
    """Rank 0 picks the checkpoint and broadcasts it; every rank loads it. Resume() if none."""
    chosen = [str(choose(directory, log) or "") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    if not chosen[0]:
        return Resume()
    path = Path(chosen[0])
    client = json.loads((path / CLIENT).read_text())
    if client["world_size"] != world_size:
        raise CheckpointError(f"{path} was written by {client['world_size']} ranks, this attempt has "
                              f"{world_size}: the data order per rank would change; resubmit with the same "
                              "world size, or --force to start over")
    load_path, _ = engine.load_checkpoint(str(directory), tag=path.name, load_module_strict=True,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {path}")
    rng = path / f"rng.rank{dist.get_rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    log(f"resumed from {path.name} (step {client['step']}, {client['tokens']} tokens)")
    return Resume(client["step"], client["tokens"])


def prune(directory: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the last `keep_last`, except kept ones; rank 0 only."""
    done = complete(directory)
    removable = [p for p in done[:-keep_last] if not json.loads((p / CLIENT).read_text()).get("keep")]
    for path in removable:
        shutil.rmtree(path, ignore_errors=True)
    return removable


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
