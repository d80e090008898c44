"""Run directories written by hand, in the layout the trainer writes: inputs for collector tests
whose numbers the tests choose."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


def write_run(root: Path, experiment: str, seed: int, *, scale: str = "smoke", done: bool = True,
              loss_image: float = 6.0, loss_text: float = 1.0, early_text: float | None = None,
              fd: float | None = None, fd_samples: int = 64, val_targets: int = 512,
              language: dict[int, float] | None = None, lr: float = 3e-3, steps: int = 10,
              per_sample_image: list[float] | None = None) -> Path:
    """One training run; `language` maps step (0 = the final step) to facts_probe accuracy;
    `fd_samples` and `val_targets` are settings its evaluations were measured under."""
    run_id = hashlib.sha256(f"{experiment}{seed}{scale}{lr}".encode()).hexdigest()[:10]
    path = root / experiment / run_id
    (path / "eval").mkdir(parents=True)
    config = {"job": "train", "experiment": experiment, "scale": scale, "seed": seed, "model": {"name": scale},
              "train": {"steps": steps, "lr": lr}, "align": {"shuffle_captions": False}, "freeze": [],
              "init": {"strategy": "random", "source": None}, "paths": {"runs_root": str(root)}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    attempt = {"attempt": 1, "job_id": "1", "executor": "local", "start": "t0", "end": "t1",
               "exit_reason": "completed" if done else "failed", "nodes": ["n1"]}
    (path / "provenance.json").write_text(json.dumps({"git": {"sha": "a" * 40, "dirty": False},
                                                      "data": {"hash": "d" * 64}, "attempts": [attempt]}))
    records = [{"step": s, "tokens": 100 * s, "loss_text": early_text if s == 1 and early_text else loss_text + 1,
                "loss_image": loss_image + 1} for s in range(1, steps)]
    records.append({"step": steps, "tokens": 100 * steps, "loss_text": loss_text, "loss_image": loss_image})
    (path / "metrics.jsonl").write_text("".join(json.dumps({**r, "timing": {}}) + "\n" for r in records))
    (path / "model.json").write_text(json.dumps({"parameters": 1000, "trainable": 1000}))
    _eval(path, "val_loss", steps, {"loss_text": loss_text, "loss_image": loss_image, "targets_text": val_targets,
                                    "targets_image": val_targets, "provenance": {"dataset": "d" * 64, "split": "val"},
                                    **({"per_sample": {"loss_image": per_sample_image}} if per_sample_image else {})})
    if fd is not None:
        _eval(path, "image", steps, {"metric": "FD (shapes classifier)", "value": fd, "samples": fd_samples,
                                     "extractor": "shapes classifier classifier-smoke sha256:ccc",
                                     "reference": f"/cache/fid_reference/ddd-shapes--{fd_samples}.npz",
                                     "clip_score": {"value": None}})
    for step, accuracy in (language or {}).items():
        tasks = {"facts_probe": {"accuracy": accuracy, "chance": 0.25}}
        _eval(path, "language", step or steps, {"tasks": tasks, "prompts": [], "perplexity": {}})
    if done:
        (path / "DONE").write_text("done\n")
    return path


def _eval(path: Path, name: str, step: int, values: dict) -> None:
    (path / "eval" / f"{name}@{step}.json").write_text(json.dumps({"step": step, **values}))
