"""Shared fixtures. The micro dataset and the micro pre-trained LM are built once per test session;
every test that submits gets its own runs root."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.config import compose_runs
from harness.data.dataset import Dataset, ensure_dataset

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> CliResult:
    """Run the real `harness` command in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the micro dataset (built once per session)."""
    root = tmp_path_factory.mktemp("data")
    ensure_dataset(compose_runs(["scale=micro"])[0].config.data, root, log=lambda _msg: None)
    return root


@pytest.fixture(scope="session")
def micro_dataset(data_root: Path) -> Dataset:
    return ensure_dataset(compose_runs(["scale=micro"])[0].config.data, data_root)


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def micro_args(runs_root: Path, data_root: Path, *extra: str) -> list[str]:
    return ["scale=micro", f"paths.runs_root={runs_root}", f"paths.data_root={data_root}", *extra]
