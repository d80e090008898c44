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
GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from this run")


@pytest.fixture(scope="session", autouse=True)
def isolated_user_config(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read the developer's ~/.config/harness or HARNESS_CLUSTER."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    os.environ.pop("HARNESS_CLUSTER", None)


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare text with tests/golden/<name>; `pytest --update-golden` rewrites the file instead."""
    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.write_text(text)
        assert path.exists(), f"no golden file {path}; run pytest --update-golden and review it"
        assert text == path.read_text(), f"differs from {path}; if intended: pytest --update-golden"
    return check


def slurm_available() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return "UP" in out


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A real Slurm cluster (.ci/slurm-up.sh). CI sets HARNESS_REQUIRE_SLURM=1: missing is a failure."""
    if slurm_available():
        return
    if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
        pytest.fail("HARNESS_REQUIRE_SLURM=1 but no Slurm cluster answers `scontrol ping`")
    pytest.skip("no Slurm cluster here; start one with `bash .ci/slurm-up.sh` (root, Debian)")


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
def smoke_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the smoke dataset (built once per session, ~20 s)."""
    root = tmp_path_factory.mktemp("smoke-data")
    ensure_dataset(compose_runs(["scale=smoke"])[0].config.data, root, log=lambda _msg: None)
    return root


@pytest.fixture(scope="session")
def micro_dataset(data_root: Path) -> Dataset:
    return ensure_dataset(compose_runs(["scale=micro"])[0].config.data, data_root)


@pytest.fixture(scope="session")
def local_micro_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, Path, CliResult]:
    """`harness submit experiment=random_init scale=micro` on the local default, once per session."""
    runs_root = tmp_path_factory.mktemp("runs")
    result = run_cli("submit", "experiment=random_init", *micro_args(runs_root, data_root))
    assert result.returncode == 0, result.stderr
    (run_dir,) = (runs_root / "random_init").iterdir()
    return runs_root, run_dir, result


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def micro_args(runs_root: Path, data_root: Path, *extra: str) -> list[str]:
    return ["scale=micro", f"paths.runs_root={runs_root}", f"paths.data_root={data_root}", *extra]
