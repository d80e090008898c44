"""`harness estimate`: exact parameter counts from the meta device, the config's token arithmetic,
activation-checkpoint recompute (model vs hardware FLOPs), ZeRO communication, wall time from
throughput, measured (bench/results) versus nominal throughput, and the published anchor."""

import json
import re

import pytest

from harness import hardware
from harness.hardware import spec_peak

from harness.config import compose_runs
from harness.estimate import (ASSUMED_HFU, count_parameters, estimate, estimate_run,
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


def test_wall_time_is_steps_of_compute_plus_communication_and_nominal_without_bench(paper_config, tmp_path):
    row = estimate_run(paper_config, "random_init", tmp_path)  # empty results dir: nominal
    # The assumed utilisation is of hardware FLOPs (the paper config recomputes activations).
    assert row.throughput.tokens_per_s == pytest.approx(ASSUMED_HFU * spec_peak("A100") / row.hardware_flops_per_token)
    assert row.throughput.label.startswith("nominal (assumed HFU 40%)")
    compute = row.tokens_per_step / (row.throughput.tokens_per_s * 64)
    assert row.step_s == pytest.approx(compute + row.comm.seconds)
    assert row.overlapped_step_s == pytest.approx(max(compute, row.comm.seconds))
    # No overlap (the pessimistic bound) for wall time and GPU-hours.
    assert row.wall_s == pytest.approx(row.total_tokens / row.tokens_per_step * (compute + row.comm.seconds))
    assert row.gpu_hours == pytest.approx(row.wall_s * 64 / 3600)


def test_the_paper_reference_line_is_always_printed(tmp_path):
    text = estimate(PAPER, tmp_path)
    assert "paper (reference)" in text.splitlines()[0]
    reference = [line for line in text.splitlines() if line.strip().startswith("reference:")]
    assert len(reference) == 1
    assert "open_lm-1b, 100B tokens" in reference[0] and "64 A100" in reference[0]
    assert "GPU-hours" in reference[0]
    assert "nominal (assumed HFU 40%)" in text


def _write_bench(directory, name, figures, gpu):
    machine = {"cuda": gpu is not None, **({"gpu": gpu} if gpu else {})}
    (directory / f"{name}.json").write_text(json.dumps({"benchmark": name, "machine": machine,
                                                        "figures": figures}))


def test_a_measured_gpu_figure_is_used_and_labelled_measured(paper_config, tmp_path):
    fpt = flops_per_token(1_000_000_000, 50_000, 16, 1536, 1024)
    _write_bench(tmp_path, "gpu", {"tokens_per_s": 20_000.0, "flops_per_token": fpt}, "NVIDIA A100-SXM4-80GB")
    row = estimate_run(paper_config, "random_init", tmp_path)
    # Same GPU type: scaled to the run's model by hardware FLOPs per token only (the benchmark ran
    # without recompute, so its HFU is its MFU; the run recomputes, so its MFU is lower).
    hfu = 20_000 * fpt / spec_peak("A100")
    assert row.throughput.tokens_per_s == pytest.approx(20_000 * fpt / row.hardware_flops_per_token)
    assert row.throughput.hfu == pytest.approx(hfu)
    assert row.throughput.mfu == pytest.approx(hfu * row.flops_per_token / row.hardware_flops_per_token)
    assert row.throughput.label.startswith("measured")
    text = estimate(PAPER, tmp_path)
    assert "measured" in text and "nominal" not in text


def test_a_bench_file_without_a_rate_falls_back_to_nominal(paper_config, tmp_path):
    _write_bench(tmp_path, "gpu", {"device": "NVIDIA H200", "error_train": "OutOfMemoryError: ..."}, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    assert row.throughput.label.startswith("nominal (assumed HFU 40%)")
    assert "not used" in row.throughput.label


def test_a_measurement_on_another_gpu_is_carried_at_its_mfu(paper_config, tmp_path):
    row0 = estimate_run(paper_config, "random_init", tmp_path)
    # No model description: the benchmark is taken to have run this model.
    _write_bench(tmp_path, "gpu", {"tokens_per_s": 30_000.0}, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    hfu = 30_000 * row0.flops_per_token / spec_peak("H200")  # it ran without recompute: HFU = its MFU
    assert row.throughput.hfu == pytest.approx(hfu)
    assert row.throughput.tokens_per_s == pytest.approx(hfu * spec_peak("A100") / row0.hardware_flops_per_token)
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
    assert row.throughput.hfu == pytest.approx(40_000 * row0.flops_per_token / spec_peak("H200"))
    assert row.throughput.tokens_per_s == pytest.approx(40_000 * spec_peak("A100") / spec_peak("H200")
                                                        * row0.flops_per_token / row0.hardware_flops_per_token)
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


@pytest.fixture(scope="module")
def paper_cli(tmp_path_factory):
    """`harness estimate experiment=random_init cluster=a100_8x8` as a user runs it, once per module
    (an empty results directory: nominal throughput)."""
    result = run_cli("estimate", *PAPER, "--bench-results", str(tmp_path_factory.mktemp("bench")))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_prints_the_table_and_bad_input_exits_2_with_one_line(paper_cli):
    assert "parameters N" in paper_cli and "1,507,012,608" in paper_cli
    bad = run_cli("estimate", "experiment=nope")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr


# ---------------------------------------------------------------------------------------------
# Recompute, communication, the anchor


def _recompute(checkpointing: bool, tmp_path):
    config = compose_runs([*PAPER, f"model.activation_checkpointing={str(checkpointing).lower()}"])[0].config
    return config, estimate_run(config, "random_init", tmp_path)


def test_recompute_adds_exactly_the_checkpointed_forward_and_only_when_on(tmp_path):
    config, on = _recompute(True, tmp_path)
    _, off = _recompute(False, tmp_path)
    m, seq, vocab = config.model, config.data.seq_len, on.vocab_size
    assert on.flops_per_token == off.flops_per_token
    assert off.hardware_flops_per_token == off.flops_per_token
    # The blocks are checkpointed (harness.model.open_lm), not the input embedding or the output
    # layer: their forward, 2 FLOPs per weight plus a third of attention's 12 L d seq, runs twice.
    blocks = on.params - 2 * vocab * m.d_model
    forward = 2 * blocks + 4 * m.n_layers * m.d_model * seq
    assert on.hardware_flops_per_token - on.flops_per_token == forward
    # The GPU executes the recompute: the same HFU buys fewer tokens, and MFU is HFU x model/hardware.
    assert on.throughput.hfu == off.throughput.hfu == ASSUMED_HFU
    assert on.throughput.tokens_per_s * on.hardware_flops_per_token == pytest.approx(
        off.throughput.tokens_per_s * off.hardware_flops_per_token)
    assert on.throughput.mfu == pytest.approx(ASSUMED_HFU * on.flops_per_token / on.hardware_flops_per_token)
    assert off.throughput.mfu == pytest.approx(ASSUMED_HFU)


def test_a_benchmark_that_recomputed_is_credited_its_hardware_flops(paper_config, tmp_path):
    row0 = estimate_run(paper_config, "random_init", tmp_path)
    figures = {"device": "NVIDIA H200", "model": "open_lm_1b", "seq_len": 1088, "vocab_size": row0.vocab_size,
               "parameters": row0.params, "train_tokens_per_s": 30_000.0, "activation_checkpointing": True}
    _write_bench(tmp_path, "gpu", figures, "NVIDIA H200")
    row = estimate_run(paper_config, "random_init", tmp_path)
    assert row.throughput.hfu == pytest.approx(30_000 * row0.hardware_flops_per_token / spec_peak("H200"))
    # Same model, both recomputing: carried by the peaks alone.
    assert row.throughput.tokens_per_s == pytest.approx(30_000 * spec_peak("A100") / spec_peak("H200"))


def test_zero1_bytes_per_step_follow_from_the_printed_parameter_count(paper_config, paper_cli):
    n = int(re.search(r"^parameters N\s+([\d,]+)", paper_cli, re.M).group(1).replace(",", ""))
    w = paper_config.world_size
    assert w == 64 and paper_config.train.zero_stage == 1 and paper_config.train.precision == "bf16"
    # Reduce-scatter of bf16 gradients + all-gather of bf16 parameters: two ring passes over 2N
    # bytes, each sending (W-1)/W of it from every GPU.
    sent = 2 * (2 * n) * (w - 1) // w
    line = next(line for line in paper_cli.splitlines() if line.startswith("  communication (random_init)"))
    assert f"{sent:,} bytes" in line
    # 8 nodes: NCCL's bus bandwidth, the node's 4x HDR InfiniBand, 100 GB/s.
    assert "4x HDR IB per node, NVLink 3" in line and "bus bandwidth = the node's 100 GB/s" in line
    assert f"{sent / 100e9:.3f} s per step" in line


def test_one_node_communicates_over_nvlink(tmp_path):
    config = compose_runs([*PAPER, "launch.nodes=1"])[0].config
    row = estimate_run(config, "random_init", tmp_path)
    assert row.comm.bytes_per_gpu == pytest.approx(2 * 2 * row.params * 7 / 8)
    assert row.comm.seconds == pytest.approx(row.comm.bytes_per_gpu / 300e9)
    assert "within one node" in row.comm.link


def test_the_cli_names_the_dominant_term_and_the_anchor_ratio(paper_cli, tmp_path):
    lines = paper_cli.splitlines()
    step = next(line for line in lines if line.startswith("  step time (random_init)"))
    assert "no overlap" in step and "optimistic bound" in step
    assert re.search(r"(compute|communication) dominates$", step)
    recompute = next(line for line in lines if line.startswith("  recompute (random_init)"))
    assert "hardware FLOPs/token" in recompute
    assert any(line.startswith("hardware FLOPs/token") and "(recompute)" in line for line in lines)
    assert any(line.startswith("MFU / HFU, computing") for line in lines)
    # The ratio to the anchor is the step's MFU over the anchor's 31%.
    row = estimate_run(compose_runs(PAPER)[0].config, "random_init", tmp_path)
    mfu = row.over_step(row.throughput.mfu)
    ratio = next(line for line in lines if line.startswith("  vs anchor (random_init)"))
    assert f"{mfu / hardware.ANCHOR_1B.mfu:.2f}x the anchor" in ratio
    assert "Ultra-Scale Playbook figure, approximate" in paper_cli
    # Communication makes compute the smaller share than without it, and wall time uses the sum.
    assert row.compute_s / row.step_s < 1 and "nominal (assumed HFU 40%)" in paper_cli


def test_a_cpu_profile_prints_no_communication_term(tmp_path):
    config = compose_runs(["scale=micro"])[0].config
    _write_bench(tmp_path, "train_step", {"harness_positions_per_s": 5_000.0}, None)
    row = estimate_run(config, "micro", tmp_path)
    assert row.comm is None and row.step_s == pytest.approx(row.compute_s)
    text = estimate(["scale=micro"], tmp_path)
    assert not [line for line in text.splitlines() if line.startswith(("  communication (micro", "  step time (micro",
                                                                       "  vs anchor (micro"))]
    comm_row = next(line for line in text.splitlines() if line.startswith("communication per step"))
    assert comm_row.split()[3] == "-"  # the micro column; the reference (64 A100) has its own
