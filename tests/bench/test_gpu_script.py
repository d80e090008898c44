"""bench/gpu.py, the one-GPU throughput script, kept alive without a GPU: its --cpu --tiny mode
runs every measurement's code path on tiny models, and its paper-scale constants match jobs/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from bench import gpu
from harness.config.schema import TrainConfig

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


def job(path: str) -> dict:
    return yaml.safe_load((JOBS / path).read_text())


def test_cpu_tiny_runs_every_measurement_and_writes_positive_figures(tmp_path):
    # --output keeps the committed bench/results/ untouched.
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--cpu", "--tiny", "--output", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^train: [\d,]+ tokens/s", out, re.M), out
    assert re.search(r"^MFU: [\d.e+-]+% of the measured matmul peak", out, re.M), out
    assert re.search(r"^encode \(MoVQGAN tiny, random weights\): [\d,.]+ images/s", out, re.M), out
    written = list(tmp_path.glob("*.json"))
    assert [p.name for p in written] == ["gpu_tiny_cpu.json"]
    payload = json.loads(written[0].read_text())
    figures = payload["figures"]
    assert not [key for key in figures if key.startswith("error_")], figures
    for key in ("matmul_peak_tflops", "train_tokens_per_s", "train_step_s", "flops_per_token",
                "mfu_vs_matmul_peak_pct", "peak_memory_gib", "encode_images_per_s_tiny", "parameters"):
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures.get(key))
    # On the CPU only the measured matmul peak is a reference, and no target applies.
    assert "mfu_vs_spec_peak_pct" not in figures
    assert all(target.startswith("n/a") for target in payload["targets"].values()), payload["targets"]


def test_paper_constants_match_the_job_configs():
    model = job("model/open_lm_1b.yaml")
    for key in ("d_model", "n_layers", "n_heads", "ffn_hidden", "positional"):
        assert getattr(gpu.OPEN_LM_1B, key) == model[key], key
    micro = job("model/micro.yaml")
    for key in ("d_model", "n_layers", "n_heads", "ffn_hidden"):
        assert getattr(gpu.MICRO, key) == micro[key], key
    data = job("data/hqitp.yaml")
    assert (gpu.PAPER_SEQ_LEN, gpu.TEXT_VOCAB, gpu.CODEBOOK, gpu.IMAGE_SIZE, gpu.MOVQ_PAPER_VARIANT) == (
        data["seq_len"], data["text_vocab_size"], data["codebook_size"], data["image_size"],
        data["tokenizer"]["image_variant"])
    paper = job("scale/paper.yaml")
    assert gpu.PAPER_MICRO_BATCH == paper["train"]["micro_batch"]
    assert gpu.PAPER_ATTENTION == paper["model"]["attention"]
    # (PyYAML reads 3e-4, with no dot, as a string: hence float())
    assert gpu.LR == float(paper["train"]["lr"]) and gpu.WEIGHT_DECAY == float(paper["train"]["weight_decay"])
    defaults = TrainConfig()
    assert list(gpu.BETAS) == defaults.betas and gpu.GRAD_CLIP == defaults.grad_clip
