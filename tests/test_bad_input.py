"""Bad input, one table (issue #22): every command refuses what it cannot use with ONE line on stderr,
`harness: error: <the problem> (<where it came from>)`, exit 2 (exit 1 when a job ran and failed),
no traceback, and nothing written or changed under the case's directory (its runs root, its data,
its jobs/ and defaults files) - except, for a job that ran, its own run directory.

Cases run the CLI in-process (`harness.cli.main`): an uncaught exception fails the case (a user would
see a traceback). Most fail at composition; a few plan against the session's micro dataset or a
broken copy of it; `JOB` cases start a real one-rank micro job that fails on its data.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from harness.cli import main
from harness.config import compose
from harness.config.compose import compose_runs, to_dict
from harness.data import shards
from harness.data.dataset import dataset_dir

M = ("scale=micro", "paths.runs_root={runs}", "paths.data_root={data}")
BAD = ("scale=micro", "paths.runs_root={runs}", "paths.data_root={bad}")  # a broken copy of the data
JOB = ("launch.tasks_per_node=1", "train.steps=3")  # a short one-rank run
RUN = "random_init/0123456789"  # a run directory written by hand (status, collect)

Setup = Callable[[Path, Path], dict[str, str]]  # (case directory, session data root) -> placeholders


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]         # after `harness`; {runs} {data} {tmp} and the setup's placeholders
    words: tuple[str, ...]        # each must appear on stderr (on stdout for exit 0)
    code: int = 2
    setup: Setup | None = None
    env: dict[str, str] = field(default_factory=dict)  # formatted like args
    job: bool = False             # a job runs (and fails): its run directory is written


# --- setups: each writes only under the case's directory -----------------------------------------

def defaults_file(text: str) -> Setup:
    """~/.config/harness/defaults.yaml holding `text` (XDG_CONFIG_HOME={xdg})."""
    def setup(tmp: Path, _data: Path) -> dict[str, str]:
        (tmp / "xdg" / "harness").mkdir(parents=True)
        (tmp / "xdg" / "harness" / "defaults.yaml").write_text(text)
        return {"xdg": str(tmp / "xdg")}
    return setup


def jobs_file(name: str, text: str) -> Setup:
    """A copy of jobs/ (used in place of the checkout's) with one file added or replaced."""
    def setup(tmp: Path, _data: Path) -> dict[str, str]:
        shutil.copytree(compose.JOBS_DIR, tmp / "jobs")
        (tmp / "jobs" / name).write_text(text)
        return {"jobs": str(tmp / "jobs")}
    return setup


def a_file(tmp: Path, _data: Path) -> dict[str, str]:
    (tmp / "file").write_text("not a directory\n")
    return {"file": str(tmp / "file")}


def a_model_file(tmp: Path, _data: Path) -> dict[str, str]:
    """A model.pt (with its COMPLETE marker) that is not a model at all."""
    (tmp / "lm").mkdir()
    (tmp / "lm" / "model.pt").write_bytes(b"not a torch file")
    (tmp / "lm" / "COMPLETE").write_text("step 1\n")
    return {"model": str(tmp / "lm" / "model.pt")}


def broken_data(breakage: Callable[[Path], None]) -> Setup:
    """A private copy of the micro dataset ({bad} is its data root), then broken."""
    def setup(tmp: Path, data_root: Path) -> dict[str, str]:
        source = dataset_dir(compose_runs(["scale=micro"])[0].config.data, data_root)
        shutil.copytree(source, tmp / "data" / source.name)
        breakage(tmp / "data" / source.name)
        return {"bad": str(tmp / "data")}
    return setup


def truncate_a_shard(root: Path) -> None:
    shard = root / "captions" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])


def remove_tokenizer(root: Path) -> None:
    (root / "tokenizer.json").unlink()


def corrupt_tokenizer(root: Path) -> None:
    (root / "tokenizer.json").write_text("{")


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def breakage(root: Path) -> None:
        manifest = json.loads((root / shards.MANIFEST).read_text())
        change(manifest)
        (root / shards.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return breakage


def rewrite_train_shards(change: Callable[[str, bytes], bytes | None]) -> Callable[[Path], None]:
    """Every caption training shard rewritten member by member (`change` returns the new bytes, or
    None to drop the member), and the manifest's sha256 updated: a dataset that passes the submit's
    checks and breaks only where a job reads a sample."""
    def breakage(root: Path) -> None:
        manifest = json.loads((root / shards.MANIFEST).read_text())
        for entry in manifest["corpora"]["captions"]["train"]:
            path = root / "captions" / entry["file"]
            with tarfile.open(path) as old:
                members = [(m, old.extractfile(m).read()) for m in old.getmembers()]
            with tarfile.open(path, "w") as new:
                for member, data in members:
                    data = change(member.name, data)
                    if data is not None:
                        member.size = len(data)
                        new.addfile(member, io.BytesIO(data))
            entry["sha256"] = shards.file_sha256(path)
        (root / shards.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return breakage


def drop_text_ids(name: str, data: bytes) -> bytes | None:
    return None if name.endswith(".text.npy") else data


def image_codes_past_the_codebook(name: str, data: bytes) -> bytes:
    if not name.endswith(".image.npy"):
        return data
    out = io.BytesIO()
    np.save(out, np.full(16, 300, dtype=np.int16))  # the micro codebook has 256 codes
    return out.getvalue()


def a_run(config_text: str | None = None, provenance_text: str | None = None) -> Setup:
    """runs/random_init/0123456789 written by hand: a valid micro config and provenance, unless given."""
    def setup(tmp: Path, _data: Path) -> dict[str, str]:
        run = tmp / "runs" / RUN
        run.mkdir(parents=True)
        config = to_dict(compose_runs(["scale=micro"])[0].config)
        (run / "config.yaml").write_text(config_text if config_text is not None else yaml.safe_dump(config))
        provenance = provenance_text if provenance_text is not None else json.dumps({"attempts": []})
        (run / "provenance.json").write_text(provenance)
        return {}
    return setup


def planned_run_with_provenance(text: str) -> Setup:
    """The directory the micro random_init run would have, holding an unreadable provenance.json."""
    def setup(tmp: Path, data_root: Path) -> dict[str, str]:
        from harness.plan import plan

        args = [a.format(runs=tmp / "runs", data=data_root) for a in M]
        (planned,) = plan(args, log=lambda _msg: None)
        planned.run.path.mkdir(parents=True)
        (planned.run.path / "config.yaml").write_text(yaml.safe_dump(to_dict(planned.config)))
        (planned.run.path / "provenance.json").write_text(text)
        return {}
    return setup


NL = "\n"

CASES: dict[str, Case] = {
    # 1. values that reach a shell or name a directory
    "account with a newline": Case(("submit", "--dry-run", *M, "cluster=slurm_ci", f"launch.account='a{NL}b'"),
                                   ("launch.account: 'a\\nb' holds a control character", "command line")),
    "partition with a newline": Case(("submit", "--dry-run", *M, f"launch.partition='gpu{NL}#SBATCH --x'"),
                                     ("launch.partition", "control character")),
    "qos with a newline": Case(("submit", "--dry-run", *M, f"launch.qos='q{NL}x'"), ("launch.qos", "control")),
    "constraint with a newline": Case(("submit", "--dry-run", *M, f"launch.constraint='a100{NL}x'"),
                                      ("launch.constraint", "control")),
    "exclude with a newline": Case(("submit", "--dry-run", *M, f"launch.exclude='n1{NL}x'"), ("launch.exclude",)),
    "setup line with a newline": Case(("submit", "--dry-run", *M, f"launch.setup=['module load x{NL}rm -rf y']"),
                                      ("launch.setup: 'module load x\\nrm -rf y' holds a control character",)),
    "image with a newline": Case(("submit", "--dry-run", *M, f"container.image='img{NL}x'"), ("container.image",)),
    "runs root with a newline": Case(("submit", "--dry-run", "scale=micro", f"paths.runs_root='{{tmp}}/r{NL}x'"),
                                     ("paths.runs_root", "control character")),
    "data root with a newline": Case(("submit", "--dry-run", "scale=micro", "paths.runs_root={runs}",
                                      f"paths.data_root='{{tmp}}/d{NL}x'"),
                                     ("paths.data_root", "control character")),
    "partition a shell would split": Case(("submit", "--dry-run", *M, "launch.partition='gpu;reboot'"),
                                          ("launch.partition: 'gpu;reboot' holds characters Slurm does not accept",)),
    "account with a space": Case(("submit", "--dry-run", *M, "launch.account='a b'"), ("launch.account",)),
    "unknown experiment": Case(("submit", *M, "experiment=nope"),
                               ("unknown experiment 'nope' (command line: experiment=nope); valid: align,",)),
    "experiment outside the runs root": Case(("submit", "--dry-run", *M, "experiment=../x"),
                                             ("unknown experiment '../x' (command line: experiment=../x)",)),
    "appended experiment outside the runs root": Case(("submit", *M, "+experiment=../x"), ("unknown experiment",)),
    "experiment field escaping in a file": Case(
        ("submit", "--dry-run", *M, "experiment=escape"),
        ("experiment: '../x' is not a valid name", "(jobs/experiment/escape.yaml)"),
        setup=jobs_file("experiment/escape.yaml", "# @package _global_\nexperiment: ../x\n")),
    "hidden experiment name in a file": Case(
        ("submit", "--dry-run", *M, "experiment=hidden"), ("experiment: '.hidden' is not a valid name",),
        setup=jobs_file("experiment/hidden.yaml", "# @package _global_\nexperiment: .hidden\n")),
    "data name with a path": Case(("submit", "--dry-run", *M, "data.name=../../etc"),
                                  ("data.name: '../../etc' is not a valid name", "command line: data.name=../../etc")),
    "model name with a slash": Case(("show", *M, "model.name=a/b"), ("model.name",)),
    "setup line with a newline from the defaults file": Case(
        ("submit", "--dry-run", *M), ("launch.setup", "control character", "user defaults {xdg}/harness/defaults.yaml"),
        setup=defaults_file('overrides: ["launch.setup=[\'a\\nb\']"]\n'), env={"XDG_CONFIG_HOME": "{xdg}"}),

    # 2. ranges, and the rules between keys
    "negative steps": Case(("submit", *M, "train.steps=-1"), ("train.steps: -1 is outside [1, inf) (command line",)),
    "zero steps": Case(("submit", "--dry-run", *M, "train.steps=0"), ("train.steps: 0 is outside",)),
    "zero lr": Case(("submit", "--dry-run", *M, "train.lr=0"), ("train.lr: 0.0 is outside (0, inf)",)),
    "negative lr": Case(("submit", "--dry-run", *M, "train.lr=-0.001"), ("train.lr: -0.001 is outside",)),
    "nan lr": Case(("submit", "--dry-run", *M, "train.lr=nan"), ("train.lr: nan is outside",)),
    "warmup as long as training": Case(
        ("submit", "--dry-run", *M, "train.warmup_steps=24"),
        ("train.warmup_steps=24 must be fewer than train.steps=24", "train.steps: jobs/scale/micro.yaml")),
    "shortened run keeps its warmup": Case(
        ("submit", "--dry-run", "scale=smoke", "train.steps=5", "paths.runs_root={runs}"),
        ("train.warmup_steps=10 must be fewer than train.steps=5", "train.steps: command line: train.steps=5")),
    "negative warmup": Case(("submit", "--dry-run", *M, "train.warmup_steps=-1"), ("train.warmup_steps",)),
    "heads do not divide the width": Case(
        ("submit", "--dry-run", *M, "model.n_heads=3"),
        ("model.d_model=32 is not divisible by model.n_heads=3", "model.n_heads: command line: model.n_heads=3")),
    "odd rotary head width": Case(("submit", "--dry-run", *M, "model.n_heads=32"), ("must be even",)),
    "negative GPUs": Case(("submit", "--dry-run", *M, "launch.gpus_per_node=-1"), ("launch.gpus_per_node: -1",)),
    "zero micro-batch": Case(("submit", "--dry-run", *M, "train.micro_batch=0"), ("train.micro_batch: 0",)),
    "zero grad accumulation": Case(("submit", "--dry-run", *M, "train.grad_accum=0"), ("train.grad_accum: 0",)),
    "zero tasks per node": Case(("submit", *M, "launch.tasks_per_node=0"), ("launch.tasks_per_node: 0 is outside",)),
    "zero nodes": Case(("submit", "--dry-run", *M, "launch.nodes=0"), ("launch.nodes: 0",)),
    "two local nodes": Case(("submit", "--dry-run", *M, "launch.nodes=2"), ("the local executor runs on one node",)),
    "more tasks than GPUs": Case(("submit", "--dry-run", *M, "cluster=slurm_ci", "launch.tasks_per_node=4",
                                  "launch.gpus_per_node=2"), ("exceeds launch.gpus_per_node=2",)),
    "signal after the time limit": Case(("submit", "--dry-run", *M, "launch.signal_delay_s=3600"),
                                        ("launch.signal_delay_s=3600 is not shorter than launch.timeout_min=60",)),
    "zero attempts": Case(("submit", "--dry-run", *M, "launch.max_attempts=0"), ("launch.max_attempts: 0",)),
    "negative failures": Case(("submit", "--dry-run", *M, "launch.max_failures=-1"), ("launch.max_failures: -1",)),
    "negative seed": Case(("submit", "--dry-run", *M, "seed=-1"), ("seed: -1 is outside [0, inf)",)),
    "negative eval step": Case(("submit", "--dry-run", *M, "experiment=eval_image", "step=-1"),
                               ("eval.step: -1", "command line: eval.step=-1")),
    "more eval parts than samples": Case(("submit", "--dry-run", *M, "experiment=eval_image", "eval.parts=9"),
                                         ("eval.parts=9 exceeds eval.samples=8",)),
    "top_p above one": Case(("submit", "--dry-run", *M, "experiment=eval_image", "eval.top_p=1.5"), ("eval.top_p",)),
    "a beta of one": Case(("submit", "--dry-run", *M, "train.betas=[0.9,1.0]"), ("train.betas: 1.0 is outside [0, 1)",)),
    "one beta": Case(("submit", "--dry-run", *M, "train.betas=[0.9]"), ("must be two numbers",)),
    "codebook past int16": Case(("submit", "--dry-run", *M, "data.codebook_size=40000"), ("data.codebook_size",)),
    "image size off the tokenizer grid": Case(("submit", "--dry-run", *M, "data.image_size=36"),
                                              ("not a multiple of the image tokenizer's downsampling",)),
    "sequence too short for an image": Case(("submit", "--dry-run", *M, "data.seq_len=12"),
                                            ("data.seq_len=12 cannot hold an image",)),
    "zero norm eps": Case(("submit", "--dry-run", *M, "model.norm_eps=0"), ("model.norm_eps",)),
    "contrastive batch of one": Case(("submit", "--dry-run", *M, "experiment=align", "align.batch_size=1"),
                                     ("align.batch_size: 1",)),
    "tokenizer warmup past its steps": Case(("submit", "--dry-run", *M, "experiment=train_tokenizer",
                                             "tokenizer_training.warmup_steps=900"),
                                            ("tokenizer_training.warmup_steps=900 must be fewer",)),
    "negative few-shot": Case(("submit", "--dry-run", *M, "experiment=eval_language",
                               "eval.language_fewshot={{arc_easy: -1}}"),
                              ("eval.language_fewshot.arc_easy: -1 is outside [0, inf) (command line",)),
    "zero token mark": Case(("submit", "--dry-run", *M, "train.keep_at_tokens=[0]"), ("train.keep_at_tokens: 0",)),
    "part past the parts": Case(("submit", "--dry-run", *M, "experiment=tokenize", "tokenize.part=2"),
                                ("tokenize.part=2 must be below tokenize.parts=2",)),
    "text mix of one": Case(("submit", "--dry-run", *M, "data.text_mix=1.0"), ("data.text_mix: 1.0 is outside [0, 1)",)),
    "zero text weight": Case(("submit", "--dry-run", *M, "train.text_loss_weight=0"),
                             ("train.text_loss_weight: 0.0 is outside (0, inf)",)),
    "a word for a number": Case(("submit", *M, "train.lr=abc"), ("train.lr: Value 'abc'",)),
    "unknown key": Case(("submit", *M, "no_such_key=1"), ("unknown key 'no_such_key' (command line: no_such_key=1)",)),
    "unknown nested key": Case(("show", *M, "train.no_such=1"), ("unknown key 'train.no_such'",)),
    "unknown choice": Case(("submit", "--dry-run", *M, "model.positional=sideways"),
                           ("model.positional: 'sideways' is not one of",)),
    "zero seeds to reproduce": Case(("reproduce", "--seeds", "0", *M), ("argument --seeds: 0 is below 1",)),
    "estimate of zero steps": Case(("estimate", *M, "train.steps=0"), ("train.steps: 0",)),

    # 3. what used to end in a traceback
    "YAML error in an experiment file": Case(
        ("submit", "--dry-run", *M, "experiment=broken"),
        ("jobs/experiment/broken.yaml: not valid YAML", "(line 3, column 1)"),
        setup=jobs_file("experiment/broken.yaml", "# @package _global_\ntrain: {steps: [1,\n")),
    "YAML error in a group file": Case(("submit", "--dry-run", *M, "experiment=broken"),
                                       ("jobs/group/broken.yaml: not valid YAML",),
                                       setup=jobs_file("group/broken.yaml", "overrides: [a\n")),
    "data root is a file": Case(("submit", "--dry-run", "scale=micro", "paths.runs_root={runs}",
                                 "paths.data_root={file}"), ("paths.data_root={file}: not a directory",), setup=a_file),
    "data root is a file to build into": Case(("data", "build", "scale=micro", "paths.data_root={file}"),
                                              ("not a directory",), setup=a_file),
    "runs root is a file": Case(("submit", "--dry-run", "scale=micro", "paths.runs_root={file}",
                                 "paths.data_root={data}"), ("paths.runs_root={file}: not a directory",), setup=a_file),
    "status of a runs root that does not exist": Case(("status", "--runs-root", "{runs}"), ("does not exist",)),
    "cancel under a runs root that does not exist": Case(("cancel", "x", "--runs-root", "{runs}"), ("does not exist",)),
    "status of an unreadable provenance": Case(("status", "--runs-root", "{tmp}/runs"),
                                               ("{tmp}/runs/" + RUN + "/provenance.json",), code=1,
                                               setup=a_run(provenance_text="{broken")),
    "status of an unreadable config": Case(("status", "--runs-root", "{tmp}/runs"),
                                           ("{tmp}/runs/" + RUN + "/config.yaml",), code=1,
                                           setup=a_run(config_text="train: [\n")),
    "resubmit over an unreadable provenance": Case(("submit", *M), ("provenance.json: unreadable",),
                                                   setup=planned_run_with_provenance("{broken")),

    # 4. errors name where the value came from
    "unknown cluster in the defaults file": Case(
        ("submit", "--dry-run", *M), ("unknown cluster 'nope' (user defaults {xdg}/harness/defaults.yaml: cluster=nope)",),
        setup=defaults_file("overrides: [cluster=nope]\n"), env={"XDG_CONFIG_HOME": "{xdg}"}),
    "unknown key in the defaults file": Case(
        ("show", *M), ("unknown key 'nokey' (user defaults {xdg}/harness/defaults.yaml: nokey=1)",),
        setup=defaults_file("overrides: [nokey=1]\n"), env={"XDG_CONFIG_HOME": "{xdg}"}),
    "out of range in the defaults file": Case(
        ("submit", "--dry-run", *M), ("launch.nodes: 0 is outside [1, inf) (user defaults",),
        setup=defaults_file("overrides: [launch.nodes=0]\n"), env={"XDG_CONFIG_HOME": "{xdg}"}),
    "unparsable override in the defaults file": Case(
        ("submit", "--dry-run", *M), ("cannot parse 'train.lr=[1,2' (user defaults {xdg}/harness/defaults.yaml)",),
        setup=defaults_file('overrides: ["train.lr=[1,2"]\n'), env={"XDG_CONFIG_HOME": "{xdg}"}),
    "YAML error in the defaults file": Case(
        ("submit", "--dry-run", *M), ("{xdg}/harness/defaults.yaml: not valid YAML", "line 2"),
        setup=defaults_file("overrides: [\n"), env={"XDG_CONFIG_HOME": "{xdg}"}),
    "unknown cluster in HARNESS_CLUSTER": Case(
        ("submit", "--dry-run", *M), ("unknown cluster 'nope' (environment variable HARNESS_CLUSTER: cluster=nope)",),
        env={"HARNESS_CLUSTER": "nope"}),
    "unparsable list": Case(("submit", *M, "train.lr=[1,2"), ("cannot parse 'train.lr=[1,2' (command line)",)),
    "unparsable sweep": Case(("submit", *M, "seed=range(3"), ("cannot parse 'seed=range(3' (command line)",)),
    "empty experiment": Case(("submit", *M, "experiment="), ("no experiment given (command line: experiment=)",)),
    "empty model": Case(("show", *M, "model="), ("no model given (command line: model=)",)),
    "group inside a sweep": Case(("submit", "--dry-run", *M, "experiment=main_comparison,random_init"),
                                 ("'main_comparison' is a group of experiments", "cannot be part of a sweep")),
    "unknown option": Case(("submit", "--dry-run", "--no-such-flag"), ("unrecognized arguments: --no-such-flag",)),
    "unknown command": Case(("nope",), ("invalid choice: 'nope'",)),

    # 5. a dry run refuses what the submit refuses
    "dry run of an evaluation of a run that is not there": Case(
        ("submit", "--dry-run", *M, "experiment=eval_image", "run=random_init/0123456789"),
        ("eval.run=random_init/0123456789: that run is new, not done",)),
    "submit of an evaluation of a run that is not there": Case(
        ("submit", *M, "experiment=eval_image", "run=random_init/0123456789"),
        ("eval.run=random_init/0123456789: that run is new, not done",)),
    "dry run of an evaluation of nothing": Case(("submit", "--dry-run", *M, "experiment=eval_image", "run=nope"),
                                                ("eval.run='nope': not an experiment",)),
    "dry run over a truncated shard": Case(("submit", "--dry-run", *BAD), ("captions/train-000001.tar: sha256 differs",),
                                           setup=broken_data(truncate_a_shard)),
    "submit over a truncated shard": Case(("submit", *BAD), ("captions/train-000001.tar: sha256 differs",),
                                          setup=broken_data(truncate_a_shard)),
    "dry run from a model file that is not there": Case(
        ("submit", "--dry-run", *M, "experiment=pretrained", "init.source={tmp}/nowhere.pt"),
        ("init.source='{tmp}/nowhere.pt'", "no such file")),
    "submit of a dataset not restored yet": Case(("submit", *M, "data=hqitp"), ("dataset 'hqitp' is missing",)),
    "dry run of a dataset not restored yet (provisional)": Case(("submit", "--dry-run", *M, "data=hqitp"),
                                                                ("provisional",), code=0),

    # 6. data and model files a job would trip on: named at submit where cheap, else by the job
    "empty training split": Case(("submit", "--dry-run", *BAD), ("the captions/train split holds no samples",),
                                 setup=broken_data(edit_manifest(lambda m: m["corpora"]["captions"].update(train=[])))),
    "manifest without a tokenizer hash": Case(
        ("submit", *BAD), ("manifest.json: not a dataset manifest this harness reads (no text_tokenizer.sha256)",),
        setup=broken_data(edit_manifest(lambda m: m["text_tokenizer"].pop("sha256")))),
    "manifest that is not JSON": Case(("submit", "--dry-run", *BAD), ("manifest.json", "not valid JSON"),
                                      setup=broken_data(lambda root: (root / "manifest.json").write_text("{"))),
    "missing tokenizer.json": Case(("submit", "--dry-run", *BAD), ("tokenizer.json is missing",),
                                   setup=broken_data(remove_tokenizer)),
    "corrupt tokenizer.json": Case(("submit", *BAD), ("tokenizer.json: sha256 differs",),
                                   setup=broken_data(corrupt_tokenizer)),
    "init from a model file that is not one": Case(
        ("submit", "--dry-run", *M, "experiment=pretrained", "init.source={model}"),
        ("model file {model} is unreadable",), setup=a_model_file),
    "sample without its text ids": Case(
        ("submit", *BAD, *JOB), ("failed:", "captions/train-0000", "has no text.npy"), code=1, job=True,
        setup=broken_data(rewrite_train_shards(drop_text_ids))),
    "image code past the codebook": Case(
        ("submit", *BAD, *JOB), ("failed:", "captions/train-0000", "image code 300 is outside 0..255"), code=1,
        job=True, setup=broken_data(rewrite_train_shards(image_codes_past_the_codebook))),

    # 7. nothing to do is an error, not a silent success
    "empty sweep": Case(("submit", *M, "seed=range(0)"), ("seed: the sweep is empty", "command line: seed=range(0)")),
    "empty sweep on a dry run": Case(("submit", "--dry-run", *M, "train.lr=range(1,1)"), ("train.lr: the sweep is empty",)),
}


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file under root (but `skip`) and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not (skip and p.is_relative_to(skip))}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, tmp_path, data_root, capsys, monkeypatch):
    places = {"tmp": str(tmp_path), "runs": str(tmp_path / "runs"), "data": str(data_root)}
    places.update(case.setup(tmp_path, data_root) if case.setup else {})
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**places))
    if "jobs" in places:
        monkeypatch.setattr(compose, "JOBS_DIR", Path(places["jobs"]))
    runs_existed = (tmp_path / "runs").exists()
    before = snapshot(tmp_path, skip=tmp_path / "runs" if case.job else None)
    capsys.readouterr()

    code = main([arg.format(**places) for arg in case.args])  # an exception here is a traceback for a user

    out, err = capsys.readouterr()
    assert code == case.code, out + err
    assert "Traceback" not in out + err
    if case.code:
        assert len(err.splitlines()) == 1 and err.startswith("harness: error: "), err
    for words in case.words:
        assert words.format(**places) in (err if case.code else out), err
    assert snapshot(tmp_path, skip=tmp_path / "runs" if case.job else None) == before
    assert case.job or runs_existed or not (tmp_path / "runs").exists()


def test_collect_lists_a_run_with_an_unreadable_provenance_apart_and_says_so(tmp_path, data_root, capsys):
    """Not refused: one corrupt run among many must not stop the report, nor be averaged in."""
    a_run(provenance_text="{broken")(tmp_path, data_root)
    code = main(["collect", "--runs-root", str(tmp_path / "runs"), "--output", str(tmp_path / "R.md")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"harness: warning: {tmp_path / 'runs' / RUN}: unreadable provenance.json" in err
    assert "unreadable provenance.json" in (tmp_path / "R.md").read_text()


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
