"""Versioning with real DVC and git: tokenized shards and an exported checkpoint go to a directory
remote, come back byte for byte in a fresh clone whose cache is gone, and train."""

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.rundir import find_runs
from tests.conftest import run_cli

DVC = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]


def sh(*command: str, cwd: Path) -> str:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(command)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def versioned(tmp_path_factory, data_root):
    """A repo whose data/ (micro shards + an exported pre-trained LM) is pushed to a directory
    remote, and a fresh clone that pulled it after the original cache was deleted."""
    base = tmp_path_factory.mktemp("dvc")
    repo, remote, runs = base / "repo", base / "remote", base / "runs"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh(DVC, "init", "-q", cwd=repo)
    sh(DVC, "config", "core.analytics", "false", cwd=repo)
    sh(DVC, "remote", "add", "-d", "store", str(remote), cwd=repo)

    built = run_cli("data", "build", "scale=micro", f"paths.data_root={repo / 'data'}")  # tokenize
    assert built.returncode == 0, built.stderr
    upstream = run_cli("submit", "experiment=pretrain_text", "scale=micro", f"paths.runs_root={runs}",
                       f"paths.data_root={repo / 'data'}")
    assert upstream.returncode == 0, upstream.stderr
    (lm,) = find_runs(runs)
    exported = run_cli("export", lm.name, "--runs-root", str(runs), "--output", str(repo / "data/checkpoints/lm_micro"))
    assert exported.returncode == 0, exported.stderr

    sh(DVC, "add", "-q", "data", cwd=repo)
    sh(DVC, "push", "-q", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-q", "-m", "data", cwd=repo)

    clone = base / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=base)
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(DVC, "pull", "-q", cwd=clone)
    return repo, clone


def test_pull_in_a_fresh_clone_restores_byte_identical_shards(versioned):
    repo, clone = versioned
    assert files(clone / "data") == files(repo / "data")
    _, mismatch, errors = filecmp.cmpfiles(repo / "data", clone / "data", [str(p) for p in files(repo / "data")],
                                           shallow=False)
    assert not mismatch and not errors


def test_a_run_on_pulled_data_records_the_same_data_hash(versioned, tmp_path):
    repo, clone = versioned
    (manifest,) = (clone / "data").glob("micro-*/manifest.json")
    result = run_cli("submit", "experiment=random_init", "scale=micro", f"paths.runs_root={tmp_path}",
                     f"paths.data_root={clone / 'data'}")
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(tmp_path)
    original = (repo / "data" / manifest.parent.name / "manifest.json").read_bytes()
    import hashlib

    assert json.loads(run.provenance_path.read_text())["data"]["hash"] == hashlib.sha256(original).hexdigest()


def test_a_versioned_checkpoint_initialises_a_pretrained_run(versioned, tmp_path):
    _, clone = versioned
    model = clone / "data/checkpoints/lm_micro/model.pt"
    result = run_cli("submit", "experiment=pretrained", "scale=micro", f"init.source={model}",
                     f"paths.runs_root={tmp_path}", f"paths.data_root={clone / 'data'}")
    assert result.returncode == 0, result.stderr
    (run,) = find_runs(tmp_path)
    assert f"source: {model}" in run.config_path.read_text() and run.done_path.exists()


def test_a_shard_modified_after_versioning_is_caught_before_training(versioned, tmp_path):
    _, clone = versioned
    work = tmp_path / "data"
    shutil.copytree(clone / "data", work)
    (shard,) = work.glob("micro-*/captions/train-000002.tar")
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(raw))
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=random_init", "scale=micro", f"paths.runs_root={runs_root}",
                     f"paths.data_root={work}")
    assert result.returncode == 2
    assert f"{shard}: sha256 differs" in result.stderr and "dvc pull" in result.stderr
    assert not runs_root.exists()


def test_a_fresh_clone_regenerates_the_committed_data_byte_for_byte(tmp_path):
    """data.dvc describes the synthetic datasets; rebuilding them matches its md5 (what a fresh
    clone does instead of pulling from an empty default remote)."""
    from tests.conftest import REPO

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(REPO), str(clone), cwd=tmp_path)
    for scale in ("micro", "smoke"):
        built = run_cli("data", "build", f"scale={scale}", f"paths.data_root={clone / 'data'}")
        assert built.returncode == 0, built.stderr
    committed = (clone / "data.dvc").read_text()
    sh(DVC, "add", "-q", "data", cwd=clone)  # hashes the rebuilt files into data.dvc (and the cache)
    assert (clone / "data.dvc").read_text() == committed
    assert "up to date" in sh(DVC, "status", "data.dvc", cwd=clone)
