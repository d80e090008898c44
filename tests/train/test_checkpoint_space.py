"""A disk that fills up during a checkpoint (issue #22): the run stops with one line naming the
place and the space left, the previous checkpoint stays loadable, and a resubmit once there is room
resumes from it and ends as an uninterrupted run does. Through the real `harness submit` (2 ranks),
with the run's checkpoints directory on a small tmpfs (needs root, as CI has)."""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as torch_mp

from harness.plan import plan
from harness.rundir import RunDir, read_metrics, without_timing
from harness.train import checkpoints, model_file
from harness.train.loop import _save_final
from harness.train.writes import NotWritten
from tests.conftest import micro_args, run_cli

# A micro checkpoint of 2 ranks takes 1.17 MiB on tmpfs (whole pages), DeepSpeed's two recovery
# scripts beside it 44 KiB: step 8's fits in 1600k, step 16's does not.
SMALL, ROOMY = "1600k", "16m"


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)  # a straggler still holds it


def resize(directory: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(directory)], check=True)


def test_a_full_disk_during_a_checkpoint_stops_in_one_line_and_the_resubmit_resumes(tmp_path, data_root,
                                                                                     local_micro_run):
    args = ["experiment=random_init", *micro_args(tmp_path, data_root), "train.checkpoint_every_steps=8"]
    (planned,) = plan(args, log=lambda _msg: None)
    run, directory = planned.run, planned.run.checkpoints
    with tmpfs(directory, SMALL):
        first = run_cli("submit", *args)
        assert first.returncode == 1, first.stderr
        assert "Traceback" not in first.stderr
        (line,) = [line for line in first.stderr.splitlines() if "could not be written" in line]
        cause = f"checkpoint step00000016 could not be written to {directory}: No space left on device ("
        assert cause in line and line.endswith(f"free); logs: {run.logs(1)}"), line
        assert checkpoints.verify(directory / "step00000008") is None
        assert not (directory / "step00000016").exists()  # the partial save is gone, its space free again
        assert cause in run.attempts()[0]["exit_reason"]
        records = [json.loads((run.logs(1) / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["exit_code"] == 1 and cause in r["reason"] for r in records), records  # all ranks agreed

        resize(directory, ROOMY)
        second = run_cli("submit", *args)
        assert second.returncode == 0, second.stderr
        assert "resumed from step00000008" in (run.logs(2) / "rank0.log").read_text()
        _, reference, _ = local_micro_run  # the same run, uninterrupted (checkpoints change nothing)
        assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(reference / "metrics.jsonl"))


def test_a_model_file_that_does_not_fit_fails_in_one_line_and_leaves_no_part(tmp_path):
    directory = tmp_path / "small"
    with tmpfs(directory, "64k"):
        with pytest.raises(NotWritten) as raised:
            model_file.save_model_file(directory / "final", {"w": torch.zeros(100_000)}, {}, {}, 1, 1, None)
        assert str(raised.value).startswith(f"model file {directory / 'final' / 'model.pt'} could not be written: "
                                            "No space left on device (")
        assert raised.value.exit_code == 1 and list((directory / "final").iterdir()) == []


# One rank fails at one place while the other succeeds: (failing rank, what fails).
FAILURES = {"optimizer shard": (0, "optim_states"), "recovery script": (0, "script"), "rng file": (1, "rng."),
            "marker": (0, "marker")}


def test_ranks_agree_on_a_failed_save_wherever_one_rank_fails(tmp_path):
    """A real DeepSpeed engine on 2 gloo ranks: no rank waits for another in a collective, every
    rank raises the same line, the partial directory goes, and later saves still work. The final
    model file, which rank 0 alone writes, likewise."""
    torch_mp.spawn(_save_with_failures, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]
    directory = RunDir(tmp_path / "run").checkpoints
    for step, name in enumerate(FAILURES, start=2):
        assert got[0][name].startswith(f"checkpoint step{step:08d} could not be written to {directory}: "
                                       "No space left on device ("), (name, got[0][name])
        assert not (directory / checkpoints.tag_of(step)).exists()
    kept = checkpoints.complete(directory)
    assert [p.name for p in kept] == ["step00000001", "step00000099"]
    assert all(checkpoints.verify(p) is None for p in kept)
    assert got[0]["final model"].startswith(f"model file {directory / 'final' / 'model.pt'} could not be written: "
                                            "No space left on device (")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_with_failures(rank: int, world: int, port: int, root: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # as loop._init_distributed
    import deepspeed

    # A short timeout: a rank left waiting fails the test instead of hanging it.
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, timeout=timedelta(seconds=60))
    model = torch.nn.Linear(4, 4)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}})
    run, seen = RunDir(root / "run"), {}
    directory = run.checkpoints
    checkpoints.save(engine, directory, 1, 1, {}, keep=False)
    for step, (name, (failing, where)) in enumerate(FAILURES.items(), start=2):
        with _failing(engine, where if rank == failing else None):
            try:
                checkpoints.save(engine, directory, step, step, {}, keep=False)
            except NotWritten as exc:
                seen[name] = str(exc)
    checkpoints.save(engine, directory, 99, 99, {}, keep=False)  # the ranks are still in step
    if rank == 0:
        model_file.torch_save = _full
    try:
        _save_final(run, {"architecture": {}, "layout": {}, "text_tokenizer": None}, 99, 99)
    except NotWritten as exc:
        seen["final model"] = str(exc)
    (root / f"rank{rank}.json").write_text(json.dumps(seen))
    torch.distributed.destroy_process_group()


@contextmanager
def _failing(engine, where: str | None) -> Iterator[None]:
    """This rank's write at `where` fails as on a full disk (None: nothing fails)."""
    original = checkpoints.torch_save, checkpoints._mark_complete
    if where == "script":
        engine._copy_recovery_script = _full  # DeepSpeed's copyfile, outside its checkpoint engine
    elif where == "marker":
        checkpoints._mark_complete = _full
    elif where is not None:
        checkpoints.torch_save = lambda obj, path, *a: _full() if where in path.name else original[0](obj, path, *a)
    try:
        yield
    finally:
        checkpoints.torch_save, checkpoints._mark_complete = original
        engine.__dict__.pop("_copy_recovery_script", None)


def _full(*_args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
