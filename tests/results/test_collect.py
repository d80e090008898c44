"""The collector over the committed outputs of `harness reproduce scale=smoke`, and reproduce itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from harness.results.claims import HOLDS, NOT_COMPARABLE, NOT_RUN
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


def test_the_committed_results_have_numbers_in_every_table_and_a_verdict_for_every_claim():
    text = (REPO / "RESULTS.md").read_text()
    for heading in ("Claims", "Main comparison", "Loss curves", "Unconditional generation", "Freezing",
                    "Contrastive alignment", "Language forgetting", "Held-out caption perplexity", "Samples"):
        assert f"### {heading}" in text, heading
    claims = [line for line in text.splitlines() if line.startswith("| **")]
    assert len(claims) == 9 and all(re.search(r"\*\*(holds|does not hold|not run at this scale|not comparable)\*\* \|$", c)
                                    for c in claims)
    assert "(n=3)" in text and "FD (random extractor)" in text


def test_removing_a_run_drops_exactly_its_numbers(tmp_path):
    shutil.copytree(REPO / COMMITTED, tmp_path / COMMITTED, ignore=shutil.ignore_patterns(".code", "checkpoints"))
    before = build(tmp_path / COMMITTED, link_base=tmp_path).text
    (lm,) = (tmp_path / COMMITTED / "pretrain_text").iterdir()
    (seed2,) = [p for p in (tmp_path / COMMITTED / "random_init").iterdir()
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


def test_reproduce_runs_every_experiment_and_its_evaluations_then_collects(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    result = run_cli("reproduce", "--seeds", "1", "--output", str(tmp_path / "RESULTS.md"),
                     *micro_args(runs_root, data_root, "train.keep_at_tokens=[3000]"), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    experiments = {p.name for p in runs_root.iterdir() if not p.name.startswith(".")}
    assert experiments == {"pretrain_text", "align", "random_init", "pretrained", "pretrained_aligned",
                           "freeze_embeddings", "freeze_layernorm", "freeze_ffn", "freeze_layers",
                           "uncond_random_init", "uncond_pretrained", "caption_lm", "eval_image", "eval_language"}
    (pretrained,) = (runs_root / "pretrained").iterdir()
    assert len(list((pretrained / "eval").glob("language@*.json"))) == 2  # the kept checkpoint and the end
    for run in (runs_root / "freeze_ffn").iterdir():  # frozen tensors reach the model file
        assert list((run / "eval").glob("image@*.json"))
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Listed apart" not in text and "## Scale: micro" in text
    assert (tmp_path / FIGURES / "loss_curves_micro.png").exists()


def test_an_fd_from_another_sample_count_is_neither_averaged_nor_compared(tmp_path):
    shutil.copytree(REPO / COMMITTED, tmp_path / COMMITTED, ignore=shutil.ignore_patterns(".code", "checkpoints"))
    (image,) = sorted((tmp_path / COMMITTED / "pretrained").glob("*/eval/image@*.json"))[:1]
    found = json.loads(image.read_text())
    image.write_text(json.dumps({**found, "samples": found["samples"] * 4}))
    text = build(tmp_path / COMMITTED, link_base=tmp_path).text
    row = next(line for line in text.splitlines() if line.startswith("| pretrained |"))  # the main table
    assert "not averaged: measured under different settings" in row
    assert re.search(rf"\*\*fid_same\*\*.*samples.*\*\*{NOT_COMPARABLE}\*\* \|$", text, re.MULTILINE)
    assert re.search(r"\*\*fid_same\*\*.*\| pretrained -; random_init - \[fd", text)  # nor averaged there
    assert re.search(rf"\*\*image_loss_same\*\*.*\*\*{HOLDS}\*\* \|$", text, re.MULTILINE)  # its losses still count
