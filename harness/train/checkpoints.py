"""Resumable DeepSpeed checkpoints of a run: `checkpoints/step<NNNNNNNN>/`.

Each holds DeepSpeed's model, optimizer and scheduler states (ZeRO shards included), `client.json`
(step, tokens, data position, world size, architecture, vocabulary layout) and one RNG file per
rank. It counts only once `COMPLETE` is written, last, by rank 0 after every rank has saved; the
marker lists each file's size, so a truncated file is found before it is loaded. Pruning keeps the
last `keep_last`, every checkpoint taken at a `keep_at_tokens` count, and the final one.

A save that cannot be written (a full disk) stops every rank with one line naming the directory and
the space left; its partial directory is removed and nothing is pruned, so the previous checkpoint
is the one a resubmit resumes from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harness.train.writes import NotWritten, torch_save, why

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
    """All ranks call this together; returns the checkpoint directory once it is complete.

    A rank that cannot write its part (a full disk) still takes part in every collective; the ranks
    then agree, and all raise NotWritten with the first failure. Rank 0 removes the partial
    directory: nothing of it is ever loaded, and its space is free again. Nothing is pruned."""
    tag, rank = tag_of(step), dist.get_rank()
    path = directory / tag
    state = {**client, "step": step, "tokens": tokens, "keep": keep, "world_size": dist.get_world_size()}
    _agree(tag, directory, None, _attempt(lambda: _prepare(path), directory))
    failure = _deepspeed_save(engine, directory, tag, state)
    if failure is None:
        failure = _attempt(lambda: torch_save(_rng_state(), path / f"rng.rank{rank}.pt"), directory)
    _test_kill_while_saving(step)
    _agree(tag, directory, path, failure)
    failure = _attempt(lambda: _mark_complete(path, state), directory) if rank == 0 else None
    _agree(tag, directory, path, failure)
    return path


def _prepare(path: Path) -> None:
    # Here, not in DeepSpeed: its rank 0 would skip its first barrier if this failed there.
    path.parent.mkdir(parents=True, exist_ok=True)
    if dist.get_rank() == 0:
        # Left by an interrupted attempt at this step: its marker must not vouch for the new files.
        (path / COMPLETE).unlink(missing_ok=True)


def _deepspeed_save(engine, directory: Path, tag: str, state: dict[str, Any]) -> str | None:
    """This rank's part of DeepSpeed's save; why it could not be written, or None."""
    failures: list[str] = []
    with _recorded_writes(engine, directory, failures):
        try:
            engine.save_checkpoint(str(directory), tag=tag, client_state={"harness": state}, save_latest=False)
        except Exception as exc:  # noqa: BLE001 - reported once every rank agrees
            # Rank 0's copy of DeepSpeed's recovery scripts writes outside the checkpoint engine; its
            # only collective left is the closing barrier, where the other ranks wait.
            failures.append(why(exc, directory))
            dist.barrier()
    return failures[0] if failures else None


@contextmanager
def _recorded_writes(engine, directory: Path, failures: list[str]) -> Iterator[None]:
    """DeepSpeed lets a failed write escape between its collectives (the other ranks then wait in
    its closing barrier) and writes by path (torch then hides the errno): here each file is written
    through a Python file, and a failure recorded, so every rank goes through the same collectives."""
    writer = engine.checkpoint_engine
    zipfile, original = getattr(writer, "zipfile_serialization", True), writer.save

    def save(state_dict: dict[str, Any], path: str) -> None:
        if not failures:  # after a failure this rank writes nothing more
            failure = _attempt(lambda: torch_save(state_dict, Path(path), zipfile), directory)
            failures.extend([failure] if failure else [])

    writer.save = save
    try:
        yield
    finally:
        writer.save = original


def _mark_complete(path: Path, state: dict[str, Any]) -> None:
    """Rank 0, once every rank's files are written: the marker lists each file's size."""
    (path / CLIENT).write_text(json.dumps(state, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != COMPLETE}
    partial = path / f"{COMPLETE}.partial"
    partial.write_text(json.dumps(sizes, indent=1) + "\n")
    os.replace(partial, path / COMPLETE)


def _attempt(write: Callable[[], None], directory: Path) -> str | None:
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - any failure, so that every rank still reaches _agree
        return why(exc, directory)
    return None


def first_failure(failure: str | None) -> str | None:
    """Every rank learns the first rank's failure (None: none failed); one collective."""
    failures: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    return next((f for f in failures if f), None)


def _agree(tag: str, directory: Path, partial: Path | None, failure: str | None) -> None:
    """Raise NotWritten on every rank if any rank failed; rank 0 first removes the partial save."""
    failure = first_failure(failure)
    if failure is None:
        return
    if partial is not None and dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)  # every rank is past writing: none writes there now
    raise NotWritten(f"checkpoint {tag} could not be written to {directory}: {failure}")


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
