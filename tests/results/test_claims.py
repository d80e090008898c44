"""Claims against hand-made runs whose numbers decide each verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.results.claims import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, NOT_COMPARABLE, NOT_RUN, evaluate_all
from harness.results.records import collect, read_record
from harness.rundir import find_runs
from tests.results.runs import write_run


def verdicts(root: Path, scale: str = "smoke") -> dict[str, str]:
    records = [read_record(run, root) for run in find_runs(root)]
    return {v.claim["id"]: v.verdict for v in evaluate_all(collect(records)) if v.scale == scale}


def test_equal_losses_hold_and_a_clear_gap_does_not(tmp_path):
    for seed, (random, pre) in enumerate([(6.00, 6.01), (6.02, 5.99), (5.98, 6.03)]):
        write_run(tmp_path / "same", "random_init", seed, loss_image=random, fd=30 + 0.1 * seed)
        write_run(tmp_path / "same", "pretrained", seed, loss_image=pre, fd=30.05 + 0.1 * seed)
        write_run(tmp_path / "gap", "random_init", seed, loss_image=random)
        write_run(tmp_path / "gap", "pretrained", seed, loss_image=pre - 1.0)
    assert verdicts(tmp_path / "same")["image_loss_same"] == HOLDS
    assert verdicts(tmp_path / "same")["fid_same"] == HOLDS
    assert verdicts(tmp_path / "gap")["image_loss_same"] == DOES_NOT_HOLD
    assert verdicts(tmp_path / "gap")["fid_same"] == NOT_RUN  # no image evaluation there


def test_values_measured_under_other_settings_are_not_compared(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "random_init", seed, fd=30 + seed, fd_samples=64)
        write_run(tmp_path, "pretrained", seed, fd=30 + seed, fd_samples=64 if seed else 256, val_targets=100)
    found = verdicts(tmp_path)
    assert found["fid_same"] == NOT_COMPARABLE  # one FD from 256 samples
    assert found["image_loss_same"] == NOT_COMPARABLE  # held out on fewer targets


def test_an_early_text_advantage_is_lower_beyond_seed_noise(tmp_path):
    for seed in range(2):
        write_run(tmp_path, "random_init", seed, early_text=7.0 + 0.1 * seed)
        write_run(tmp_path, "pretrained", seed, early_text=2.0 + 0.1 * seed)
    assert verdicts(tmp_path)["text_loss_early_advantage"] == HOLDS


def test_one_seed_per_arm_is_not_enough(tmp_path):
    write_run(tmp_path, "random_init", 0)
    write_run(tmp_path, "pretrained", 0)
    assert verdicts(tmp_path)["image_loss_same"] == NOT_RUN


@pytest.mark.parametrize("before, after, verdict", [(0.9, 0.3, HOLDS), (0.9, 0.8, DOES_NOT_HOLD),
                                                    (0.36, 0.34, DOES_NOT_HOLD),  # a small drop, shown
                                                    (0.3, 0.25, INCONCLUSIVE)])  # never knew it
def test_forgetting_needs_knowledge_before_a_drop_and_chance_after(tmp_path, before, after, verdict):
    write_run(tmp_path, "pretrain_text", 0, language={0: before})
    for seed in range(3):
        write_run(tmp_path, "pretrained", seed, language={0: after + 0.01 * (seed - 1)})
    assert verdicts(tmp_path)["language_forgotten"] == verdict


def test_one_run_on_each_side_decides_nothing(tmp_path):
    write_run(tmp_path, "pretrain_text", 0, language={0: 0.9})
    write_run(tmp_path, "pretrained", 0, language={0: 0.3})
    assert verdicts(tmp_path)["language_forgotten"] == INCONCLUSIVE


def test_every_frozen_arm_must_not_beat_the_baseline(tmp_path):
    arms = ("freeze_embeddings", "freeze_layernorm", "freeze_ffn", "freeze_layers")
    for seed in range(2):
        write_run(tmp_path / "same", "pretrained", seed, loss_image=6.0 + 0.01 * seed)
        write_run(tmp_path / "better", "pretrained", seed, loss_image=6.0 + 0.01 * seed)
        for arm in arms:
            write_run(tmp_path / "same", arm, seed, loss_image=6.1 + 0.01 * seed)
            write_run(tmp_path / "better", arm, seed, loss_image=(5.0 if arm == "freeze_ffn" else 6.1) + 0.01 * seed)
    assert verdicts(tmp_path / "same")["freezing_no_help"] == HOLDS
    assert verdicts(tmp_path / "better")["freezing_no_help"] == DOES_NOT_HOLD
    write_run(tmp_path / "missing", "pretrained", 0)
    assert verdicts(tmp_path / "missing")["freezing_no_help"] == NOT_RUN


def test_the_smallest_caption_lm_is_compared(tmp_path):
    import json

    for seed in range(2):
        write_run(tmp_path, "pretrained", seed, language={0: 0.3})
        for size, params in (("micro", 100), ("smoke", 1000)):
            run = write_run(tmp_path, "caption_lm", seed, lr=params)
            config = (run / "config.yaml").read_text().replace("name: smoke", f"name: {size}")
            (run / "config.yaml").write_text(config)
            (run / "model.json").write_text(json.dumps({"parameters": params, "trainable": params}))
    for run in tmp_path.glob("*/*"):  # caption perplexities: the small LM 5, the big one 50, pretrained 6
        name = (run / "config.yaml").read_text()
        ppl = 5.0 if "name: micro" in name else 50.0 if "caption_lm" in name else 6.0
        for path in (run / "eval").glob("language@*.json"):
            data = json.loads(path.read_text())
            path.write_text(json.dumps({**data, "perplexity": {"captions": {"perplexity": ppl}}}))
        if "caption_lm" in name:
            (run / "eval" / "language@10.json").write_text(json.dumps(
                {"tasks": {}, "prompts": [], "perplexity": {"captions": {"perplexity": ppl}}}))
    assert verdicts(tmp_path)["small_lm_caption_ppl"] == HOLDS


def test_two_runs_of_one_seed_are_not_both_averaged(tmp_path):
    write_run(tmp_path, "random_init", 0, loss_image=6.0)
    duplicate = write_run(tmp_path / "elsewhere", "random_init", 0, loss_image=6.0)
    duplicate.rename(tmp_path / "random_init" / "0123456789")
    collection = collect([read_record(run, tmp_path) for run in find_runs(tmp_path)])
    assert len(collection.arm("smoke", "random_init").runs) == 1
    assert [why for _, why in collection.apart] == ["same seed as another run of its arm"]


@pytest.mark.parametrize("intruder", [
    dict(seed=3, done=False, loss_image=100.0),          # failed
    dict(seed=3, lr=1e-4, loss_image=100.0),             # other settings
    dict(seed=3, scale="micro", loss_image=100.0),       # other scale
])
def test_failed_off_variant_and_other_scale_runs_are_never_averaged_in(tmp_path, intruder):
    for seed in range(3):
        write_run(tmp_path, "random_init", seed, loss_image=6.0 + 0.01 * seed)
        write_run(tmp_path, "pretrained", seed, loss_image=6.0 - 0.01 * seed)
    write_run(tmp_path, "random_init", **intruder)
    collection = collect([read_record(run, tmp_path) for run in find_runs(tmp_path)])
    arm = collection.arm("smoke", "random_init")
    assert [r.seed for r in arm.runs] == [0, 1, 2]
    assert verdicts(tmp_path)["image_loss_same"] == HOLDS
    if intruder.get("scale") != "micro":
        assert len(collection.apart) == 1


def image_arms(root: Path, pretrained: list[float], random: list[float]) -> Path:
    for seed, (pre, rand) in enumerate(zip(pretrained, random)):
        write_run(root, "pretrained", seed, loss_image=pre)
        write_run(root, "random_init", seed, loss_image=rand)
    return root


def image_verdict(root: Path):
    records = [read_record(run, root) for run in find_runs(root)]
    return next(v for v in evaluate_all(collect(records)) if v.claim["id"] == "image_loss_same")


def test_tight_arms_one_percent_apart_are_equivalent_within_two_percent(tmp_path):
    verdict = image_verdict(image_arms(tmp_path, [6.06, 6.061, 6.059], [6.0, 6.001, 5.999]))
    assert verdict.verdict == HOLDS
    (c,) = verdict.comparisons
    assert c.margin == pytest.approx(0.12) and c.interval[0] > -0.12 and c.interval[1] < 0.12


def test_the_same_means_with_a_ten_percent_seed_spread_are_inconclusive_with_a_seed_count(tmp_path):
    verdict = image_verdict(image_arms(tmp_path, [6.06 - 0.6, 6.06, 6.06 + 0.6], [6.0 - 0.6, 6.0, 6.0 + 0.6]))
    assert verdict.verdict == INCONCLUSIVE
    (c,) = verdict.comparisons
    assert c.seeds is not None and c.seeds > 3


def test_tight_arms_ten_percent_apart_are_not_equivalent(tmp_path):
    verdict = image_verdict(image_arms(tmp_path, [6.6, 6.601, 6.599], [6.0, 6.001, 5.999]))
    assert verdict.verdict == DOES_NOT_HOLD


def test_p_values_are_those_of_statsmodels_tost_and_scipys_welch_test(tmp_path):
    from scipy import stats as scipy_stats
    from statsmodels.stats.weightstats import ttost_ind

    pre, rand = [6.05, 6.12, 5.98], [6.0, 6.04, 5.93]
    (c,) = image_verdict(image_arms(tmp_path, pre, rand)).comparisons
    tost_p, _, _ = ttost_ind(pre, rand, -c.margin, c.margin, usevar="unequal")
    assert c.p_holds == pytest.approx(tost_p, rel=1e-9)
    above = scipy_stats.ttest_ind([p - c.margin for p in pre], rand, equal_var=False, alternative="greater").pvalue
    below = scipy_stats.ttest_ind([p + c.margin for p in pre], rand, equal_var=False, alternative="less").pvalue
    assert c.p_against == pytest.approx(min(above, below), rel=1e-9)
    low, high = scipy_stats.ttest_ind(pre, rand, equal_var=False).confidence_interval(0.90)
    assert c.interval == pytest.approx((low, high))


def test_arms_scored_on_the_same_samples_also_show_the_paired_difference(tmp_path):
    for seed in range(3):
        write_run(tmp_path, "pretrained", seed, loss_image=6.0 + 0.05 * seed,
                  per_sample_image=[5.0 + 0.05 * seed, 6.0, 7.0 + 0.05 * seed, 6.0])
        write_run(tmp_path, "random_init", seed, loss_image=6.1 + 0.05 * seed,
                  per_sample_image=[5.1 + 0.05 * seed, 6.1, 7.1 + 0.05 * seed, 6.1])
    (c,) = image_verdict(tmp_path).comparisons
    assert c.paired == "paired over 4 held-out samples: -0.1 [-0.1, -0.1]"  # every sample 0.1 lower
