"""experiment=train_classifier: the shapes classifier whose features give "FD (shapes classifier)"
(harness/eval/shapes_classifier.py), trained on its own split of the synthetic world
("classifier") and scored on the val images every image evaluation uses.

Outputs, in the run directory: artifact/classifier.safetensors (versioned by `harness publish`
under harness/artifacts/) and eval/classifier@<steps>.json (held-out accuracy per attribute kind, the
weights' sha256). A short job: a new attempt starts over.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.config.schema import RunConfig
from harness.data import synthetic
from harness.errors import HarnessError, run_job
from harness.eval import reconstruction
from harness.eval import shapes_classifier as sc
from harness.train.metrics import MetricsWriter, truncate_after

ARTIFACT = "artifact"
SPLIT = "classifier"


def batch(config: RunConfig, step: int, size: int, split: str = SPLIT) -> tuple[torch.Tensor, dict]:
    samples = [synthetic.captioned_image(i, split, config.data.image_size, config.data.seed)
               for i in range(step * size, (step + 1) * size)]
    return sc.to_input(np.stack([s.pixels for s in samples])), sc.labels([s.caption for s in samples])


def train_classifier(config: RunConfig, run_dir: Path, log=print) -> dict:
    settings = config.classifier_training
    if settings.steps < 1 or settings.batch_size < 1 or settings.eval_images < 1:
        raise HarnessError(f"classifier_training: steps, batch_size and eval_images must be >= 1 "
                           f"(got {settings.steps}, {settings.batch_size}, {settings.eval_images})")
    truncate_after(run_dir / "metrics.jsonl", 0)  # a new attempt starts over
    torch.manual_seed(config.seed)
    model = sc.ShapesClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    started = time.time()
    for step in range(settings.steps):
        images, truth = batch(config, step, settings.batch_size)
        outputs = model(images)
        loss = sum(F.cross_entropy(outputs[name], truth[name]) for name in sc.HEADS) / len(sc.HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % config.train.log_every == 0 or step + 1 == settings.steps:
            metrics.write({"step": step + 1, "loss": loss.item()}, {"elapsed_s": round(time.time() - started, 2)})
    model.eval()
    held_out = reconstruction.held_out(config.data, settings.eval_images)
    accuracy = sc.accuracy(model, np.stack([s.pixels for s in held_out]), [s.caption for s in held_out])
    sha256 = sc.save(model, run_dir / ARTIFACT, config.data.image_size)
    report = {"images": settings.eval_images, "split": "val", "accuracy": accuracy,
              "image_size": config.data.image_size, "sha256": sha256, "file": f"{ARTIFACT}/{sc.WEIGHTS}"}
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / f"classifier@{settings.steps}.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"shapes classifier: held-out accuracy {json.dumps({k: round(v, 4) for k, v in accuracy.items()})}; "
        f"sha256 {sha256}")
    return report


def main(run_dir: str, error_file: str | None = None) -> int:
    from harness.config import load_run_config
    from harness.rundir import RunDir

    run = RunDir(Path(run_dir))
    config = load_run_config(run.config_path)
    return run_job(lambda: train_classifier(config, run.path, log=lambda msg: print(msg, flush=True)),
                   error_file, "train_classifier")
