"""Image identity for provenance: docker/podman image id, tags, digests and labels; a SIF's sha256."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness.config.schema import ContainerConfig
from harness.data.shards import file_sha256
from harness.errors import HarnessError

GIT_SHA_LABEL = "harness.git_sha"


def identify(container: ContainerConfig) -> dict[str, Any] | None:
    """What the tasks will run in, identified by content; None when they run on the host."""
    runtime, image = container.runtime, container.image
    if runtime == "none":
        return None
    if runtime == "apptainer":
        path = Path(image)
        if not path.is_file():
            raise HarnessError(f"container.image={image}: no such SIF file (build it: see README, Containers)")
        return {"runtime": runtime, "ref": str(path.resolve()), "id": f"sha256:{file_sha256(path)}", "labels": {}}
    if shutil.which(runtime) is None:
        raise HarnessError(f"container.runtime={runtime}: `{runtime}` is not installed on this host")
    proc = subprocess.run([runtime, "image", "inspect", image], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or "not found"
        raise HarnessError(f"container.image={image}: {runtime} cannot find it ({detail}); build it with "
                           f"`{runtime} build -t {image} .` (README, Containers)")
    info = json.loads(proc.stdout)[0]
    return {"runtime": runtime, "ref": image, "id": info["Id"], "tags": info.get("RepoTags") or [],
            "digests": info.get("RepoDigests") or [], "labels": (info.get("Config") or {}).get("Labels") or {}}


def git_sha_mismatch(image: dict[str, Any] | None, code_sha: str | None) -> str | None:
    """A warning when the image was built from other code than the code to run, else None."""
    if not image or not code_sha:
        return None
    built_from = image.get("labels", {}).get(GIT_SHA_LABEL)
    if built_from and built_from != code_sha:
        return (f"warning: image {image['ref']} was built from commit {built_from[:12]}, the code to run is "
                f"{code_sha[:12]}; the run imports its own code snapshot, the image provides the environment")
    return None

