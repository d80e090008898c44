"""The sbatch scripts submitit would submit, against golden files (pytest --update-golden)."""

import io
import re
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.submit import submit
from tests.conftest import micro_args


def dry_run(runs_root, data_root, *overrides) -> str:
    out = io.StringIO()
    submit([*micro_args(runs_root, data_root), *overrides], dry_run=True, out=out)
    return out.getvalue()


def normalised(text: str, runs_root, data_root, python: str) -> str:
    text = text.replace(str(runs_root), "<RUNS>").replace(str(data_root), "<DATA>").replace(python, "<PYTHON>")
    text = text.replace(str(Path.cwd()), "<CWD>")
    text = re.sub(r"\.code/[0-9a-f]{16}", ".code/<SNAPSHOT>", text)
    text = re.sub(r"(\.slurm/[a-z_]+)-[0-9a-f]{10}", r"\1-<GROUP>", text)
    return re.sub(r"(random_init)/[0-9a-f]{10}", r"\1/<RUN_ID>", text)


@pytest.mark.parametrize("name, overrides", [
    ("single_run.sbatch", ["cluster=slurm_ci", "experiment=random_init"]),
    ("array_of_3.sbatch", ["cluster=slurm_ci", "experiment=random_init", "seed=0,1,2"]),
    ("a100_8x8.sbatch", ["cluster=a100_8x8", "experiment=random_init", "scale=micro",
                         "launch.partition=gpu", "launch.account=t2i"]),
])
def test_rendered_sbatch_matches_golden(golden, runs_root, data_root, name, overrides):
    import sys

    text = dry_run(runs_root, data_root, *overrides)
    golden(name, normalised(text, runs_root, data_root, sys.executable))
    assert not runs_root.exists(), "--dry-run wrote under the runs root"


def test_an_array_is_one_sbatch_with_one_line_per_run(runs_root, data_root):
    text = dry_run(runs_root, data_root, "cluster=slurm_ci", "seed=0,1,2")
    assert text.count("#!/bin/bash") == 1 and "#SBATCH --array=0-2%3" in text
    assert len(re.findall(r"^#   \d: ", text, re.MULTILINE)) == 3


def test_array_parallelism_is_settable(runs_root, data_root):
    text = dry_run(runs_root, data_root, "cluster=slurm_ci", "seed=0,1,2", "launch.array_parallelism=2")
    assert "#SBATCH --array=0-2%2" in text


def test_the_paper_profile_asks_for_whole_8x8_nodes(runs_root, data_root):
    text = dry_run(runs_root, data_root, "cluster=a100_8x8", "scale=micro")
    for line in ("#SBATCH --nodes=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --exclusive", "#SBATCH --signal=USR2@300", "--kill-on-bad-exit=1"):
        assert line in text


def test_the_dry_run_shows_each_tasks_command_and_the_paper_profile_runs_in_apptainer(runs_root, data_root, tmp_path):
    text = dry_run(runs_root, data_root, "cluster=a100_8x8", "scale=micro")
    sif = Path.cwd() / "harness.sif"
    assert f"warning: container.image={sif}: no such SIF file" in text  # a warning here, an error on submit
    (line,) = [t for t in text.splitlines() if t.startswith("#   0 runs: ")]
    assert line.startswith(f"#   0 runs: apptainer exec --nv --bind {data_root}:{data_root},{runs_root}:{runs_root} ")
    assert f"{sif} harness worker {runs_root}/random_init/" in line

    image = tmp_path / "site.sif"
    image.write_bytes(b"not really a SIF, but a file")
    text = dry_run(runs_root, data_root, "cluster=a100_8x8", "scale=micro", f"container.image={image}")
    assert "warning" not in text and f"--env PYTHONPATH={runs_root}/.code/" in text

    with pytest.raises(HarnessError, match="no such SIF file"):
        submit([*micro_args(runs_root, data_root), "cluster=a100_8x8", "scale=micro"], out=io.StringIO())
    assert not runs_root.exists()
