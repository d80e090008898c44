"""The collector over the committed outputs of `harness reproduce scale=smoke`, and reproduce itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from harness.results.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, NOT_RUN
from harness.results.records import collect, read_records
from harness.results.collect import FIGURES, build
from tests.conftest import REPO, micro_args, run_cli

COMMITTED = Path("results") / "smoke"


def test_results_md_is_what_collect_makes_from_the_committed_outputs():
    report = build(REPO / COMMITTED, link_base=REPO)
    assert report.text == (REPO / "RESULTS.md").read_text()
    committed = sorted(p.name for p in (REPO / FIGURES).glob("*.png"))
    assert sorted(report.figures) == committed and committed
    for name, png in report.figures.items():
        assert png == (REPO / FIGURES / name).read_bytes(), name


def test_the_committed_outputs_hold_their_run_and_data_paths_relative():
    """The files committed from the runs name what lies under a root relative to it (README, run directory)."""
    fields = re.compile(r'"(file|root|output)": "([^"]*)"')
    found = [(path, value) for path in (REPO / COMMITTED).rglob("*.json")
             for _, value in fields.findall(path.read_text())]
    assert found and not [(p, v) for p, v in found if v.startswith("/")]


def test_the_committed_results_have_numbers_in_every_table_and_a_verdict_for_every_claim():
    text = (REPO / "RESULTS.md").read_text()
    for heading in ("Claims", "Main comparison", "Loss curves", "Unconditional generation", "Freezing",
                    "Contrastive alignment", "Language forgetting", "Held-out caption perplexity", "Samples",
                    "The small world's instruments"):
        assert f"### {heading}" in text, heading
    paper_claims = text.split("### Claims (smoke scale)")[1].split("### Main comparison")[0]
    claims = [line for line in paper_claims.splitlines() if line.startswith("| **")]
    outcomes = "holds|does not hold|inconclusive|not run at this scale|not comparable"
    assert len(claims) == 10 and all(re.search(rf"\*\*({outcomes})\*\* \(.*\) \|$", c) for c in claims)
    assert "(n=3)" in text and "FD (shapes classifier)" in text


def test_the_committed_small_world_shows_what_issue_19_asks():
    """Thresholds written before the reproduction they read (issue #19's "what it must show")."""
    records, _ = read_records(REPO / COMMITTED, REPO)
    collection = collect(records)
    assert collection.arm("smoke", "train_tokenizer") is not None, "no train_tokenizer run in results/smoke"
    tokenizer = collection.arm("smoke", "train_tokenizer").runs[0].final("reconstruction")
    assert tokenizer["oracle"]["attribute_accuracy"] >= 0.95 and tokenizer["usage"]["share"] > 0.5
    random_init, pretrained = collection.arm("smoke", "random_init"), collection.arm("smoke", "pretrained")

    def first_caption_loss(arm):
        return sum(r.metrics[0]["loss_text"] for r in arm.runs) / len(arm.runs)
    assert first_caption_loss(pretrained) < first_caption_loss(random_init)
    for run in random_init.runs:
        trained, untrained = run.final("image"), run.at_steps("image")[0]
        assert trained["metric"] == untrained["metric"] == "FD (shapes classifier)"
        assert untrained["value"] > 3 * trained["value"]  # a wide margin


def test_a_trained_random_init_follows_whole_captions_far_above_chance():
    # Registered 2026-12-02 before the run it tests (the 150-step arms scored 0.000 in the smoke
    # reproduction of f887e40): "far above chance" is at least 10% of whole captions right, over
    # 70x the chance level of ~0.14%.
    records, _ = read_records(REPO / COMMITTED, REPO)
    (run,) = collect(records).arm("smoke", "random_init_long").runs
    compliance = run.final("image")["compliance"]
    assert compliance["whole_caption"] >= 0.10 > 70 * compliance["whole_caption_chance"]


def test_removing_a_run_drops_exactly_its_numbers(tmp_path):
    shutil.copytree(REPO / COMMITTED, tmp_path / COMMITTED, ignore=shutil.ignore_patterns(".code", "checkpoints"))
    before = build(tmp_path / COMMITTED, link_base=tmp_path).text
    (lm,) = paper_runs(tmp_path / COMMITTED / "pretrain_text")
    (seed2,) = [p for p in paper_runs(tmp_path / COMMITTED / "random_init")
                if yaml.safe_load((p / "config.yaml").read_text())["seed"] == 2]
    shutil.rmtree(lm)
    shutil.rmtree(seed2)
    after = build(tmp_path / COMMITTED, link_base=tmp_path)
    assert lm.name in before and lm.name not in after.text
    assert seed2.name in before and seed2.name not in after.text
    # The claim only the pre-trained LM's evaluation supported is no longer tested...
    assert re.search(rf"\*\*language_forgotten\*\*.*\*\*{NOT_RUN}\*\*", after.text)
    # ...and every other run's row is unchanged.
    rows = lambda text: {line for line in text.splitlines() if line.startswith("| ") and "](results/" in line  # noqa: E731
                         and line.count("](results/") == 1}
    assert rows(before) - rows(after.text) == {r for r in rows(before) if lm.name in r or seed2.name in r}


def paper_runs(experiment_dir: Path) -> list[Path]:
    """The experiment's runs of the paper's own arms at smoke scale (not the questions beyond it)."""
    def own(config: dict) -> bool:
        return (config["model"]["name"], config["data"]["name"]) == ("smoke", "smoke") and \
            config["train"].get("text_loss_weight", 1) == 1 and not config["data"].get("text_mix")
    return [p for p in experiment_dir.iterdir() if own(yaml.safe_load((p / "config.yaml").read_text()))]


# The world's artifacts are published; the reproduction trains them again, here only briefly.
WORLD_SHORT = ("tokenizer_training.steps=4", "tokenizer_training.warmup_steps=2",
               "tokenizer_training.eval_images=16", "classifier_training.steps=4",
               "classifier_training.eval_images=16")


@pytest.fixture(scope="module")
def micro_reproduction(tmp_path_factory, data_root) -> tuple[Path, list[str]]:
    """`harness reproduce --seeds 1` at micro scale, once: its directory and the overrides it ran with."""
    root = tmp_path_factory.mktemp("reproduction")
    overrides = micro_args(root / "runs", data_root, "train.keep_at_tokens=[3000]", *WORLD_SHORT)
    result = run_cli("reproduce", "--seeds", "1", "--output", str(root / "RESULTS.md"), *overrides, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, overrides


def test_reproduce_runs_every_experiment_and_its_evaluations_then_collects(micro_reproduction):
    tmp_path, _ = micro_reproduction
    runs_root = tmp_path / "runs"
    experiments = {p.name for p in runs_root.iterdir() if not p.name.startswith(".")}
    assert experiments == {"train_tokenizer", "train_classifier", "pretrain_text", "align", "random_init",
                           "random_init_long", "pretrained", "pretrained_aligned",
                           "freeze_embeddings", "freeze_layernorm", "freeze_ffn", "freeze_layers",
                           "uncond_random_init", "uncond_pretrained", "caption_lm", "eval_image", "eval_language"}
    (pretrained,) = (runs_root / "pretrained").iterdir()
    assert len(list((pretrained / "eval").glob("language@*.json"))) == 2  # the kept checkpoint and the end
    for run in (runs_root / "freeze_ffn").iterdir():  # frozen tensors reach the model file
        assert list((run / "eval").glob("image@*.json"))
    (random_init,) = (runs_root / "random_init").iterdir()
    assert (random_init / "eval" / "image@0.json").exists()  # the untrained reference
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Listed apart" not in text and "## Scale: micro" in text
    assert "random_init trained longer" in text and "48 steps, seed 0" in text
    assert "### The small world's instruments (micro scale)" in text
    assert (tmp_path / FIGURES / "reconstruction_micro.png").exists()
    assert (tmp_path / FIGURES / "loss_curves_micro.png").exists()


def test_reproduce_beyond_runs_the_open_questions_and_reports_each(micro_reproduction):
    # Into the same runs root: the paper's own arms it compares against are already done there.
    tmp_path, overrides = micro_reproduction
    runs_root = tmp_path / "runs"
    result = run_cli("reproduce", "--beyond", "--seeds", "1", "--output", str(tmp_path / "RESULTS.md"), *overrides,
                     timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records, _ = read_records(runs_root, tmp_path)
    arms = {arm for (scale, arm) in collect(records).arms}
    assert {"random_init", "pretrained", "random_init[text x10]", "pretrained[text x30]", "pretrained[mix 0.1]",
            "pretrained[mix 0.3]", "random_init[model micro_d16]", "pretrained[model smoke_d64]",
            "pretrain_text[model micro_d16]", "random_init[data micro_c64]", "pretrained[data micro_c64]"} <= arms
    text = (tmp_path / "RESULTS.md").read_text()
    beyond = text.split("### Beyond the paper (micro scale)")[1].split("### Runs averaged in")[0]
    for title in ("Text-loss weighting", "Complex-text mixing", "LM size", "Image tokenizer"):
        assert f"#### {title}" in beyond
    for hypothesis in ("weighted_text_advantage_kept", "mixing_keeps_facts", "image_loss_same_larger_lm",
                       "image_loss_same_other_tokenizer"):
        assert f"**{hypothesis}**" in beyond
    assert "weighted_text_advantage_kept" not in text.split("### Main comparison")[0]  # apart from the paper's
    assert {p.name for p in (tmp_path / FIGURES).glob("beyond_*")} == {
        "beyond_text_loss_weighting_micro.png", "beyond_text_mixing_micro.png", "beyond_lm_sizes_micro.png",
        "beyond_tokenizers_micro.png"}


# What is committed from a runs root, as results/smoke was copied (.gitignore: json, jsonl, yaml,
# DONE, first sample grids), never these directories.
NOT_COMMITTED = (".code", "checkpoints", "logs", "parts", "artifact", "tb", "wandb")


def test_a_moved_runs_root_collects_the_same_and_its_files_hold_no_path_of_the_first(micro_reproduction, data_root,
                                                                                      tmp_path):
    first, _ = micro_reproduction
    moved = tmp_path / "elsewhere"
    shutil.copytree(first / "runs", moved / "runs", ignore=shutil.ignore_patterns(*NOT_COMMITTED))
    before, after = build(first / "runs", link_base=first), build(moved / "runs", link_base=moved)
    assert after.text == before.text and after.figures == before.figures and "## Scale: micro" in after.text
    assert list(moved.rglob("eval/image@*.json")) and list(moved.rglob("eval_image/*/result.json"))
    machine = (str(first / "runs"), str(data_root))
    leaks = [f"{path.relative_to(moved)}: {root}" for path in committed_files(moved) for root in machine
             if root in recorded_text(path)]
    assert not leaks


def committed_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".jsonl", ".yaml") and p.is_file())


def recorded_text(path: Path) -> str:
    """A file's text without its launch records, which are machine-specific by design: config.yaml's
    paths (jobs on other nodes read them) and provenance.json's command line as typed."""
    if path.name == "config.yaml":
        return yaml.safe_dump({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "paths"})
    if path.name == "provenance.json":
        return json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "submitted_by"})
    return path.read_text()


def test_an_fd_from_another_sample_count_is_neither_averaged_nor_compared(tmp_path):
    shutil.copytree(REPO / COMMITTED, tmp_path / COMMITTED, ignore=shutil.ignore_patterns(".code", "checkpoints"))
    (image,) = sorted((tmp_path / COMMITTED / "pretrained").glob("*/eval/image@*.json"))[:1]
    found = json.loads(image.read_text())
    image.write_text(json.dumps({**found, "samples": found["samples"] * 4}))
    text = build(tmp_path / COMMITTED, link_base=tmp_path).text
    row = next(line for line in text.splitlines() if line.startswith("| pretrained |"))  # the main table
    assert "not averaged: measured under different settings" in row
    assert re.search(rf"\*\*fid_same\*\*.*\*\*{NOT_COMPARABLE}\*\* \(.*samples.*\) \|$", text, re.MULTILINE)
    assert re.search(r"\*\*fid_same\*\*.*\| pretrained -; random_init - \[fd", text)  # nor averaged there
    assert re.search(rf"\*\*image_loss_same\*\*.*\*\*({HOLDS}|{DOES_NOT_HOLD}|{INCONCLUSIVE})\*\* \(", text)  # still judged


def test_a_runs_root_that_does_not_exist_is_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "RESULTS.md").write_text("kept\n")
    result = run_cli("collect", "--runs-root", str(tmp_path / "typo"), "--output", str(tmp_path / "RESULTS.md"))
    assert result.returncode == 2 and "typo does not exist" in result.stderr
    assert (tmp_path / "RESULTS.md").read_text() == "kept\n"


def test_a_runs_root_with_no_runs_never_replaces_a_report_or_its_figures(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / FIGURES).mkdir()
    (tmp_path / FIGURES / "loss_curves_smoke.png").write_bytes(b"png")
    (tmp_path / "RESULTS.md").write_text("kept\n")
    args = ("collect", "--runs-root", str(tmp_path / "runs"), "--output", str(tmp_path / "RESULTS.md"))
    result = run_cli(*args)
    assert result.returncode == 2 and "no readable runs under" in result.stderr and "--force" in result.stderr
    assert (tmp_path / "RESULTS.md").read_text() == "kept\n"
    assert (tmp_path / FIGURES / "loss_curves_smoke.png").read_bytes() == b"png"
    assert run_cli(*args, "--force").returncode == 0
    assert "No complete runs yet" in (tmp_path / "RESULTS.md").read_text()


def copy_committed(tmp_path: Path) -> Path:
    shutil.copytree(REPO / COMMITTED, tmp_path / COMMITTED, ignore=shutil.ignore_patterns(".code", "checkpoints"))
    return tmp_path / COMMITTED


def run_of(root: Path, experiment: str, seed: int) -> Path:
    return next(p for p in paper_runs(root / experiment) if yaml.safe_load((p / "config.yaml").read_text())["seed"] == seed)


def test_a_done_run_whose_last_metrics_line_is_cut_off_is_listed_apart_naming_the_file(tmp_path):
    root = copy_committed(tmp_path)
    run = run_of(root, "random_init", 1)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])  # the last line cut mid-write
    text = build(root, link_base=tmp_path).text
    apart = text[text.index("## Listed apart"):]
    assert re.search(rf"\[{run.parent.name}/{run.name}\].*metrics.jsonl line \d+ unreadable", apart)
    main = next(line for line in text.splitlines() if line.startswith("| random_init |"))
    assert "(n=2)" in main and run.name[:6] not in main


def test_unreadable_provenance_or_config_is_listed_apart_not_a_traceback(tmp_path):
    root = copy_committed(tmp_path)
    bad_provenance, bad_config = run_of(root, "pretrained", 0), run_of(root, "pretrained", 1)
    bad_provenance.joinpath("provenance.json").write_text('{"git": ')
    bad_config.joinpath("config.yaml").write_text("experiment: [unclosed\n")
    result = run_cli("collect", "--runs-root", str(root), "--output", str(tmp_path / "RESULTS.md"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    assert re.search(rf"\[{bad_provenance.parent.name}/{bad_provenance.name}\].*unreadable provenance.json", text)
    assert re.search(rf"{bad_config.name}.*unreadable config.yaml", text)
    main = next(line for line in text.splitlines() if line.startswith("| pretrained |"))
    assert "(n=1)" in main


def test_inflating_an_arms_seed_spread_never_turns_a_verdict_into_holds(tmp_path):
    """Each training arm's held-out losses spread 5x around their mean (means unchanged): a verdict
    may fall to inconclusive, never rise to holds."""
    from harness.results.claims import evaluate_all
    from harness.results.records import collect, read_records

    def verdicts(root: Path) -> dict[str, str]:
        return {v.claim["id"]: v.verdict for v in evaluate_all(collect(read_records(root, tmp_path)[0]))}

    root = copy_committed(tmp_path)
    before = verdicts(root)
    for arm in root.iterdir():
        files = sorted(arm.glob("*/eval/val_loss@*.json"))
        finals = {}
        for path in files:  # the final held-out file of each run
            step = int(path.stem.split("@")[1])
            if step >= finals.get(path.parent.parent, (0, None))[0]:
                finals[path.parent.parent] = (step, path)
        bodies = [(path, json.loads(path.read_text())) for _, path in finals.values()]
        for key in ("loss_image", "loss_text"):
            values = [b[key] for _, b in bodies if b.get(key) is not None]
            if len(values) < 2:
                continue
            mean = sum(values) / len(values)
            for _, body in bodies:
                if body.get(key) is not None:
                    body[key] = mean + 5 * (body[key] - mean)
        for path, body in bodies:
            path.write_text(json.dumps(body))
    after = verdicts(root)
    assert after != before or all(v != HOLDS for v in before.values())
    for claim, verdict in after.items():
        assert verdict != HOLDS or before[claim] == HOLDS, claim


def test_no_readable_runs_never_remove_committed_figures_even_for_a_new_output(tmp_path):
    (tmp_path / "runs" / "random_init" / "0123456789").mkdir(parents=True)
    (tmp_path / "runs" / "random_init" / "0123456789" / "config.yaml").write_text("experiment: [unclosed\n")
    (tmp_path / FIGURES).mkdir()
    (tmp_path / FIGURES / "loss_curves_smoke.png").write_bytes(b"png")
    result = run_cli("collect", "--runs-root", str(tmp_path / "runs"), "--output", str(tmp_path / "NEW.md"))
    assert result.returncode == 2 and "no readable runs" in result.stderr
    assert (tmp_path / FIGURES / "loss_curves_smoke.png").exists() and not (tmp_path / "NEW.md").exists()
