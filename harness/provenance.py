"""What produced a run: code, packages, data, host. Written into provenance.json at submit."""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "deepspeed", "transformers", "tokenizers", "submitit", "webdataset", "hydra-core",
            "omegaconf", "diffusers", "numpy", "dvc")


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"sha": None, "dirty": None}


def code_snapshot_id(root: Path = REPO_ROOT) -> str:
    """sha256 over the package (sources, templates, claims, published artifacts) and job configs:
    what a run executes, dirty or not."""
    digest = hashlib.sha256()
    package = [p for p in root.joinpath("harness").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    files = sorted([*package, *root.joinpath("jobs").rglob("*.yaml")])
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def submit_provenance(data: dict[str, Any], image: str | None, overrides: list[str]) -> dict[str, Any]:
    return {
        "git": git_state(),
        "image": image,
        "data": data,
        "packages": package_versions(),
        "submitted_by": {"host": socket.gethostname(), "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
                         "overrides": overrides,
                         "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
