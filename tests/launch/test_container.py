"""Containers: the Dockerfile and apptainer.def checked statically everywhere; the image built by CI
(.ci/run) exercised under the real Slurm cluster through the same wrapper apptainer uses."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from spython.main.parse.parsers import SingularityParser

from harness.config import compose_runs
from harness.launch.container import Wrapper, container_name
from harness.rundir import find_runs
from harness.rundir import read_metrics, without_timing
from tests.conftest import REPO, micro_args, run_cli
from tests.launch.test_slurm_cluster import job_id, squeue_ids, start_long_runs, wait_until

DOCKERFILE = (REPO / "Dockerfile").read_text()
DEFINITION = REPO / "apptainer.def"


def def_sections() -> dict[str, str]:
    sections, name = {"header": ""}, "header"
    for line in DEFINITION.read_text().splitlines():
        match = re.match(r"^%(\w+)", line)
        if match:
            name = match.group(1)
            sections[name] = ""
        else:
            sections[name] += line + "\n"
    return sections


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, re.MULTILINE).group(1).strip('"')


def pyproject_version() -> str:
    return re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_hadolint_passes_and_every_ignore_carries_a_reason():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], "an ignore without a reason"


def test_the_cuda_variant_is_pinned_and_prebuilds_deepspeed_ops():
    base = dockerfile_arg("BASE_IMAGE")
    assert re.match(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$", base), base
    assert "cuda" in base and "devel" in base  # nvcc is needed to prebuild DeepSpeed's ops
    assert dockerfile_arg("DS_BUILD_OPS") == "1"
    assert {"8.0", "9.0"} <= set(dockerfile_arg("TORCH_CUDA_ARCH_LIST").split(";"))  # A100, H100/H200
    assert "TORCH_EXTENSIONS_DIR=" in DOCKERFILE and 'ENTRYPOINT ["harness"]' in DOCKERFILE
    assert re.search(r"^USER 1000", DOCKERFILE, re.MULTILINE)  # not root


def test_apptainer_def_agrees_with_the_dockerfile():
    recipe = next(iter(SingularityParser(str(DEFINITION)).recipe.values()))
    sections = def_sections()
    assert re.search(r"^Bootstrap: docker-daemon$", sections["header"], re.MULTILINE)
    assert recipe.fromHeader == "harness:latest"  # the tag README's `docker build -t` gives the image
    labels = dict(label.split(" ", 1) for label in recipe.labels)
    assert labels["harness.version"] == dockerfile_arg("HARNESS_VERSION") == pyproject_version()
    assert labels["harness.git_sha"] == "{{ GIT_SHA }}" and "GIT_SHA=unknown" in sections["arguments"]
    assert labels["harness.deepspeed"] == "{{ DEEPSPEED_VERSION }}"
    assert f"DEEPSPEED_VERSION={dockerfile_arg('DEEPSPEED_VERSION')}" in sections["arguments"]
    assert "harness selftest" in sections["test"] and 'exec harness "$@"' in sections["runscript"]
    assert "TORCH_EXTENSIONS_DIR" in sections["environment"]


def wrapper(runtime: str, tmp_path: Path) -> tuple[Wrapper, dict]:
    config = compose_runs([f"container.runtime={runtime}", "container.image=/images/harness.sif",
                           "container.extra_binds=[/scratch/shared]"])[0].config
    dirs = {"data": tmp_path / "data", "runs": tmp_path / "runs"}
    code = dirs["runs"] / ".code" / "abc"
    return Wrapper(config.container, (str(dirs["data"]), str(dirs["runs"])), str(code),
                   container_name("12_3", "0", 1), gpus=True), {**dirs, "code": code}


def bound(path: Path, binds: list[str]) -> bool:
    return any(str(path).startswith(b.split(":")[0]) for b in binds)


def test_the_apptainer_command_binds_data_run_and_code(tmp_path):
    wrap, dirs = wrapper("apptainer", tmp_path)
    run_dir = dirs["runs"] / "random_init" / "0123456789"
    command = wrap.wrap(["worker", str(run_dir)], env={"RANK": "1"})
    assert command[:3] == ["apptainer", "exec", "--nv"]
    binds = command[command.index("--bind") + 1].split(",")
    assert all(bound(p, binds) for p in (dirs["data"], run_dir, dirs["code"]))
    assert "/scratch/shared:/scratch/shared" in binds
    env = command[command.index("--env") + 1]
    assert f"PYTHONPATH={dirs['code']}" in env  # the job imports the run's frozen code
    assert command[-4:] == ["/images/harness.sif", "harness", "worker", str(run_dir)]


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_docker_and_podman_commands_name_remove_and_pass_the_rank_env(runtime, tmp_path):
    wrap, dirs = wrapper(runtime, tmp_path)
    command = wrap.wrap(["worker", "x"], env={"RANK": "1", "MASTER_ADDR": "n1"})
    assert command[:4] == [runtime, "run", "--rm", "--init"]
    assert command[command.index("--name") + 1] == "harness-12_3-s0-r1"
    assert ["-e", "RANK"] == command[command.index("RANK") - 1:command.index("RANK") + 1]
    volumes = [command[i + 1] for i, arg in enumerate(command) if arg == "-v"]
    assert all(bound(p, volumes) for p in (dirs["data"], dirs["runs"], dirs["code"]))


# --- with the image CI builds --------------------------------------------------------------------

IMAGE = os.environ.get("HARNESS_TEST_IMAGE", "harness:ci")


@pytest.fixture(scope="module")
def docker_image() -> str:
    ok = shutil.which("docker") and subprocess.run(["docker", "image", "inspect", IMAGE],
                                                   capture_output=True).returncode == 0
    if ok:
        return IMAGE
    if os.environ.get("HARNESS_REQUIRE_DOCKER") == "1":
        pytest.fail(f"HARNESS_REQUIRE_DOCKER=1 but image {IMAGE} is not in a running Docker engine")
    pytest.skip(f"no Docker image {IMAGE}: .ci/run starts dockerd and builds it")


def test_the_apptainer_test_section_passes_inside_the_image(docker_image):
    script = def_sections()["test"]
    result = subprocess.run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", docker_image, "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "selftest ok" in result.stdout, result.stdout + result.stderr


def test_a_containerized_slurm_run_matches_the_host_run(docker_image, slurm_cluster, tmp_path, data_root,
                                                       local_micro_run):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "experiment=random_init", "cluster=slurm_ci", "container.runtime=docker",
                     f"container.image={docker_image}", *micro_args(runs_root, data_root), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = find_runs(runs_root)
    provenance = json.loads(run.provenance_path.read_text())
    image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", docker_image],
                              capture_output=True, text=True).stdout.strip()
    assert provenance["image"]["id"] == image_id
    for rank in (0, 1):
        inside = json.loads((run.logs(1) / f"runtime.rank{rank}.json").read_text())
        assert inside["dockerenv"] and inside["container"] == f"docker:{docker_image}"
        assert inside["harness"].startswith(str(runs_root / ".code"))
    _, host_run, _ = local_micro_run
    assert without_timing(read_metrics(run.metrics_path)) == without_timing(read_metrics(host_run / "metrics.jsonl"))


def running_containers() -> list[str]:
    return subprocess.run(["docker", "ps", "-q", "--filter", "name=harness-"],
                          capture_output=True, text=True).stdout.split()


def test_cancel_leaves_no_running_container(docker_image, slurm_cluster, tmp_path, data_root):
    runs_root, (run,) = start_long_runs(tmp_path, data_root, "container.runtime=docker",
                                        f"container.image={docker_image}")
    assert running_containers()
    job = job_id(run)
    assert run_cli("cancel", "random_init", "--runs-root", str(runs_root)).returncode == 0
    wait_until(lambda: not squeue_ids(job), 60, "squeue to empty")
    wait_until(lambda: not running_containers(), 60, "containers to be removed")


def test_submit_warns_when_the_image_was_built_from_other_code():
    from harness.launch.image import git_sha_mismatch

    image = {"ref": "harness:ci", "labels": {"harness.git_sha": "a" * 40}}
    assert "built from commit aaaaaaaaaaaa" in git_sha_mismatch(image, "b" * 40)
    assert git_sha_mismatch(image, "a" * 40) is None
    assert git_sha_mismatch(None, "b" * 40) is None
