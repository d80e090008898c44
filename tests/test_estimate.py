"""`harness estimate`: exact parameter counts from the meta device, the config's token arithmetic,
wall time from throughput, and measured (bench/results) versus nominal throughput."""

import json

import pytest

from harness.hardware import spec_peak

from harness.config import compose_runs
from harness.estimate import (ASSUMED_MFU, count_parameters, estimate, estimate_run,
                              flops_per_token, vocab_size)
from tests.conftest import run_cli

# Established by tests/model/test_open_lm.py against the released layout (50,432-row vocabulary).
OPEN_LM_1B_TEXT_ONLY = 1_439_895_552
D_MODEL = 2048
NEW_ROWS = 16_384 + 2  # image codebook + <boi>, <eoi>
PAPER = ["experiment=random_init", "cluster=a100_8x8"]


@pytest.fixture(scope="module")
def paper_config():
    return compose_runs(PAPER)[0].config


def test_open_lm_1b_at_paper_scale_counts_the_expanded_vocabulary():
    config = compose_runs(["scale=paper", "model=open_lm_1b"])[0].config
    vocab, _ = vocab_size(config)
    assert vocab == 50_432 + NEW_ROWS
    # The input embedding and the output projection each gain NEW_ROWS rows of d_model.
    expected = OPEN_LM_1B_TEXT_ONLY + 2 * NEW_ROWS * D_MODEL
    assert count_parameters(config.model, vocab) == expected == 1_507_012_608


def test_tokens_per_step_and_total_follow_the_config(paper_config, tmp_path):
    c = paper_config
    row = estimate_run(c, "random_init", tmp_path)
    per_step = c.train.micro_batch * c.train.grad_accum * c.launch.nodes * c.launch.tasks_per_node * c.data.seq_len
    assert row.tokens_per_step == per_step == 16 * 1 * 64 * 1088
    assert row.total_tokens == c.train.steps * per_step == 89_800 * 1_114_112
    assert row.flops_per_token == 6 * (row.params - 66_818 * 2048) + 12 * 24 * 2048 * 1088
    assert row.devices == 64 and row.device == "A100"


def test_wall_time_is_tokens_over_throughput_and_nominal_without_bench(paper_config, tmp_path):
    row = estimate_run(paper_config, "random_init", tmp_path)  # empty results dir: nominal
    assert row.throughput.tokens_per_s == pytest.approx(ASSUMED_MFU * spec_peak("A100") / row.flops_per_token)
    assert row.throughput.label.startswith("nominal (assumed MFU 40%)")
    assert row.wall_s == pytest.approx(row.total_tokens / (row.throughput.tokens_per_s * 64))
    assert row.gpu_hours == pytest.approx(row.wall_s * 64 / 3600)


def test_the_paper_reference_line_is_always_printed(tmp_path):
    text = estimate(PAPER, tmp_path)
    assert "paper (reference)" in text.splitlines()[0]
    reference = [line for line in text.splitlines() if line.strip().startswith("reference:")]
    assert len(reference) == 1
    assert "open_lm-1b, 100B tokens" in reference[0] and "64 A100" in reference[0]
    assert "GPU-hours" in reference[0]
    assert "nominal (assumed MFU 40%)" in text


def _write_bench(directory, name, figures, gpu):
    machine = {"cuda": gpu is not None, **({"gpu": gpu} if gpu else {})}
    (directory / f"{name}.json").write_text(json.dumps({"benchmark": name, "machine": machine,
                                                        "figures": figures}))


def test_a_measured_gpu_figure_is_used_and_labelled_measured(paper_config, tmp_path):
    fpt = flops_per_token(1_000_000_000, 50_000, 16, 1536, 1024)
    _write_bench(tmp_path, "gpu", {"tokens_per_s": 20_000.0, "flops_per_token": fpt}, "NVIDIA A100-SXM4-80GB")
    row = estimate_run(paper_config, "random_init", tmp_path)
    # Same GPU type: scaled to the run's model by FLOPs per token only.
    assert row.throughput.tokens_per_s == pytest.approx(20_000 * fpt / row.flops_per_token)
    assert row.throughput.mfu == pytest.approx(20_000 * fpt / spec_peak("A100"))
    assert row.throughput.label.startswith("measured")
    text = estimate(PAPER, tmp_path)
    assert "measured" in text and "nominal" not in text


def test_a_bench_file_without_a_rate_falls_back_to_nominal(paper_config, tmp_path):
    _write_bench(tmp_path, "gpu", {"device": "NVIDIA H200", "error_train": "OutOfMemoryError: ..."}, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    assert row.throughput.label.startswith("nominal (assumed MFU 40%)")
    assert "not used" in row.throughput.label


def test_a_measurement_on_another_gpu_is_carried_at_its_mfu(paper_config, tmp_path):
    row0 = estimate_run(paper_config, "random_init", tmp_path)
    # No model description: the benchmark is taken to have run this model.
    _write_bench(tmp_path, "gpu", {"tokens_per_s": 30_000.0}, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    mfu = 30_000 * row0.flops_per_token / spec_peak("H200")
    assert row.throughput.mfu == pytest.approx(mfu)
    assert row.throughput.tokens_per_s == pytest.approx(mfu * spec_peak("A100") / row0.flops_per_token)
    assert "carried to A100" in row.throughput.label and "H200" in row.throughput.label


def test_bench_gpu_figures_are_recounted_by_the_same_formula(paper_config, tmp_path):
    # The figures bench/gpu.py writes (its flops_per_token counts seq_len - 1 targets): the estimate
    # recounts the benchmark's model (open_lm-1b here) with its own formula.
    row0 = estimate_run(paper_config, "random_init", tmp_path)
    _write_bench(tmp_path, "gpu", {"device": "NVIDIA H200", "model": "open_lm_1b", "seq_len": 1088,
                                   "vocab_size": row0.vocab_size, "parameters": row0.params,
                                   "flops_per_token": 8.5e9, "train_tokens_per_s": 40_000.0,
                                   "mfu_vs_spec_peak_pct": 34.4}, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    assert row.throughput.mfu == pytest.approx(40_000 * row0.flops_per_token / spec_peak("H200"))
    assert row.throughput.tokens_per_s == pytest.approx(40_000 * spec_peak("A100") / spec_peak("H200"))
    assert row.throughput.label.startswith("measured")


def test_a_cpu_profile_needs_a_gpu_profile_or_a_cpu_measurement(tmp_path):
    text = estimate(["scale=micro"], tmp_path)
    assert "needs a GPU cluster profile" in text
    config = compose_runs(["scale=micro"])[0].config
    # The figures bench/train_step.py writes: the harness's step, not the bare one, is the rate, and
    # in positions (the run's token budget counts padding too), not non-pad targets.
    m = config.model
    _write_bench(tmp_path, "train_step", {"parameters": 70_080, "d_model": m.d_model, "n_layers": m.n_layers,
                                          "harness_positions_per_s": 5_000.0, "harness_tokens_per_s": 4_000.0,
                                          "bare_tokens_per_s": 6_000.0}, None)
    row = estimate_run(config, "micro", tmp_path)
    assert row.device == "CPU" and row.gpu_hours is None
    bench_fpt = flops_per_token(70_080, row.vocab_size, m.n_layers, m.d_model, config.data.seq_len)
    assert row.throughput.tokens_per_s == pytest.approx(5_000.0 * bench_fpt / row.flops_per_token)
    assert row.wall_s == pytest.approx(row.total_tokens / (5_000.0 * config.world_size))
    assert "measured on CPU" in estimate(["scale=micro"], tmp_path)


def test_cli_prints_the_table_and_bad_input_exits_2_with_one_line(tmp_path):
    result = run_cli("estimate", *PAPER, "--bench-results", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "parameters N" in result.stdout and "1,507,012,608" in result.stdout
    bad = run_cli("estimate", "experiment=nope")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr
