"""The experiment catalogue: every experiment runs at micro scale through `harness submit`, and
the chains between them (LM -> alignment -> training) are planned and submitted in order."""

import json

from harness.config.compose import list_experiments
from harness.data.tokenize import make_raw
from harness.config import compose_runs, load_run_config
from harness.rundir import find_runs
from tests.conftest import micro_args, run_cli

TRAINING = ["random_init", "random_init_long", "pretrained", "pretrained_aligned", "freeze_embeddings", "freeze_layernorm",
            "freeze_ffn", "freeze_layers", "uncond_random_init", "uncond_pretrained", "caption_lm",
            "pretrain_text", "align"]


def test_the_catalogue_is_complete():
    assert sorted([*TRAINING, "tokenize", "eval_image", "eval_language", "train_tokenizer",
                   "train_classifier"]) == list_experiments()


def test_every_experiment_runs_at_micro_scale(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", f"experiment={','.join(TRAINING)}", *micro_args(runs_root, data_root, "train.steps=4"))
    assert result.returncode == 0, result.stdout + result.stderr
    done = {run.experiment for run in find_runs(runs_root) if run.done_path.exists()}
    assert done == set(TRAINING)
    # one upstream LM and one alignment serve every experiment that starts from them
    configs = [load_run_config(run.config_path) for run in find_runs(runs_root)]
    sources = {c.init.source for c in configs if c.init.strategy != "random" or c.job == "align"}
    alignments = {c.init.alignment for c in configs if c.init.strategy == "aligned"}
    assert len(sources) == 1 and sources.pop().startswith("pretrain_text/")
    assert len(alignments) == 1 and alignments.pop().startswith("align/")
    frozen = json.loads(next((runs_root / "freeze_layers").iterdir()).joinpath("model.json").read_text())
    assert frozen["frozen_tensors"] and all(t.startswith("layers.0.") for t in frozen["frozen_tensors"])

    shapes_root = tmp_path / "data"
    make_raw(compose_runs(["data=shapes", "data.raw.n_train=64", "data.raw.n_val=32"])[0].config.data,
             shapes_root, log=lambda _msg: None)
    tokenized = run_cli("submit", "experiment=tokenize", "data=shapes", "data.raw.n_train=64", "data.raw.n_val=32",
                        f"paths.data_root={shapes_root}", f"paths.runs_root={runs_root}")
    assert tokenized.returncode == 0, tokenized.stdout + tokenized.stderr
    assert "dataset complete" in tokenized.stdout


def test_the_aligned_experiment_chains_align_then_train_at_paper_scale(tmp_path):
    result = run_cli("submit", "--dry-run", "experiment=pretrained_aligned", "cluster=a100_8x8",
                     f"paths.runs_root={tmp_path / 'runs'}", f"paths.data_root={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    align_script, train_script = out.split("# sbatch (")[1:]
    assert "--job-name=harness-align" in align_script and "--job-name=harness-pretrained_aligned" in train_script
    assert "--dependency" not in align_script  # the released LM is a file, not a run
    assert "#SBATCH --dependency='afterok:<job of align/" in train_script
    assert "#SBATCH --nodes=8" in train_script and "#SBATCH --gpus-per-node=8" in train_script
    assert "#SBATCH --nodes=1" in align_script and "#SBATCH --gpus-per-node=1" in align_script
    assert "provisional" in out and "open_lm_1b.pt" in out  # data and LM not restored here: said so
    assert not (tmp_path / "runs").exists()


def test_main_comparison_is_one_array_after_its_upstreams(tmp_path, data_root):
    result = run_cli("submit", "--dry-run", "experiment=main_comparison", "cluster=slurm_ci",
                     *micro_args(tmp_path / "runs", data_root))
    assert result.returncode == 0, result.stderr
    scripts = result.stdout.split("# sbatch (")[1:]
    assert [s.split(" run(s)")[0] for s in scripts] == ["1", "1", "9"]
    comparison = scripts[-1].split("# each task")[0]  # the script itself, not each task's command
    assert "#SBATCH --array=0-8" in comparison
    for experiment in ("random_init", "pretrained", "pretrained_aligned"):
        assert comparison.count(f"/{experiment}/") == 3
    assert "afterok:<job of pretrain_text/" in comparison and ":<job of align/" in comparison
