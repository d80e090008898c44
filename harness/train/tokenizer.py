"""experiment=train_tokenizer: the small scales' image tokenizer, trained as SBER-MoVQGAN was.

The paper's images are tokenized by a trained MoVQGAN; the smoke and micro worlds get the same
architecture (diffusers VQModel, norm_type="spatial"), at laptop width, trained here as a VQ
autoencoder on the synthetic images (harness/train/vq.py: reconstruction + commitment loss, EMA
codebook, dead-code restarts). Training images come from their own split of the synthetic world
("tokenizer"), so the datasets' train and val images stay unseen; the held-out report uses the
val images every image evaluation uses.

Outputs, in the run directory:
  artifact/                 the tokenizer (diffusers layout + encoding.json), codebook on the
                            portable grid: `harness publish` versions it under harness/artifacts/
  eval/reconstruction@<steps>.json  PSNR, codebook usage, oracle attribute accuracy (held out)
  eval/reconstruction@<steps>.png   real images (top row) and their round trips (bottom row)
  checkpoints/last.pt       resumable state (a preempted or failed attempt continues from it)

Training in float32 is not bit-identical across CPUs, so the trained weights are versioned (as
the released SBER-MoVQGAN weights are), and the datasets are encoded with the versioned copy
through the portable encoding: the same bytes on any CPU.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel

from harness.config.schema import RunConfig
from harness.data import portable, synthetic
from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config, to_unit_range
from harness.errors import CHECKPOINTED_EXIT, HarnessError, one_line, run_job
from harness.eval import reconstruction
from harness.train import vq
from harness.train.metrics import MetricsWriter, truncate_after
from harness.train.preemption import StopFlag
from harness.train.writes import save_whole

ARTIFACT = "artifact"
STATE = "last.pt"
SPLIT = "tokenizer"   # the synthetic split training images are drawn from


class Preempted(Exception):
    pass


def training_images(config: RunConfig, step: int, batch_size: int) -> torch.Tensor:
    """The batch of `step`: images step*B .. step*B+B-1 of the tokenizer split, in [-1, 1]."""
    first = step * batch_size
    pixels = np.stack([synthetic.captioned_image(i, SPLIT, config.data.image_size, config.data.seed).pixels
                       for i in range(first, first + batch_size)])
    return to_unit_range(pixels)


def learning_rate(config: RunConfig, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    settings = config.tokenizer_training
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        settings = config.tokenizer_training
        self.config, self.run_dir = config, run_dir
        torch.manual_seed(config.seed)
        self.model = VQModel(**tiny_movq_config(config.data.codebook_size))
        portable.init_weights(self.model, config.seed)
        codebook = self.model.quantize.embedding.weight
        codebook.requires_grad_(False)
        self.codebook = vq.EmaCodebook(codebook, settings.ema_decay, settings.restart_after,
                                       torch.Generator().manual_seed(config.seed))
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=settings.lr, betas=(0.9, 0.99))
        self.step = 0

    @property
    def state_path(self) -> Path:
        return self.run_dir / "checkpoints" / STATE

    def save_state(self) -> None:
        save_whole({"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "codebook": self.codebook.state_dict(), "generator": self.codebook.generator.get_state(),
                    "torch_rng": torch.get_rng_state()}, self.state_path, "tokenizer training state")

    def resume(self, log) -> None:
        if not self.state_path.exists():  # a fresh start: an earlier attempt's lines are replayed
            truncate_after(self.run_dir / "metrics.jsonl", 0)
            self.codebook.seed_from(self._points(training_images(self.config, 0, self.config.tokenizer_training.batch_size)))
            return
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.codebook.load_state_dict(state["codebook"])
            self.codebook.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            self.step = int(state["step"])
        except Exception as exc:
            raise RuntimeError(f"tokenizer checkpoint {self.state_path} is unreadable ({one_line(exc)}); "
                               "resubmit with --force to start over") from None
        truncate_after(self.run_dir / "metrics.jsonl", self.step)
        log(f"resumed from step {self.step}")

    @torch.no_grad()
    def _points(self, images: torch.Tensor) -> torch.Tensor:
        z = vq.latents(self.model, images)
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def train(self, stop: StopFlag, log) -> None:
        settings = self.config.tokenizer_training
        metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
        started = time.time()
        self.model.train()
        while self.step < settings.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.config, self.step)
            images = training_images(self.config, self.step, settings.batch_size)
            loss, parts, points, ids = vq.losses(self.model, self.codebook, images, settings.beta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.codebook.update(points, ids)
            self.step += 1
            if self.step % self.config.train.log_every == 0 or self.step == settings.steps:
                record = {"step": self.step, "loss": loss.item(), **parts, "lr": learning_rate(self.config, self.step - 1),
                          # codes not awaiting a restart (used, or restarted, within restart_after steps)
                          "codes_in_use": int((self.codebook.idle_steps < settings.restart_after).sum()),
                          "restarts": self.codebook.restarts}
                metrics.write(record, {"elapsed_s": round(time.time() - started, 2)})
                log(f"tokenizer step {self.step}/{settings.steps}: loss {record['loss']:.4f}  "
                    f"train PSNR {parts['psnr_train']:.2f} dB  codes restarted so far {record['restarts']}")
            if stop.check(self.step) and self.step < settings.steps:
                self.save_state()
                raise Preempted(f"preempted at step {self.step}")
            if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                self.save_state()

    def tokenizer(self) -> ImageTokenizer:
        """The trained model as a portable tokenizer: its codebook snapped onto the 2^-12 grid."""
        self.model.eval()
        codebook = self.model.quantize.embedding.weight
        with torch.no_grad():
            codebook.copy_(torch.from_numpy(portable.from_grid(portable.to_grid(codebook, "the trained codebook"))))
        weights = (f"trained by experiment=train_tokenizer ({self.config.scale} scale, seed {self.config.seed}, "
                   f"{self.config.tokenizer_training.steps} steps)")
        return ImageTokenizer(self.model, weights, encoding=portable.DESCRIPTION)


def train_tokenizer(config: RunConfig, run_dir: Path, log=print) -> dict:
    settings = config.tokenizer_training
    if settings.steps < 1 or settings.batch_size < 1 or settings.eval_images < 1:
        raise HarnessError(f"tokenizer_training: steps, batch_size and eval_images must be >= 1 "
                           f"(got {settings.steps}, {settings.batch_size}, {settings.eval_images})")
    stop = StopFlag(config.train.preempt_signal)
    trainer = Trainer(config, run_dir)
    trainer.resume(log)
    trainer.train(stop, log)
    tokenizer = trainer.tokenizer()
    artifact = run_dir / ARTIFACT
    tokenizer.save(artifact)
    name = f"reconstruction@{config.tokenizer_training.steps}"
    report = reconstruction.report(tokenizer, config.data, config.tokenizer_training.eval_images,
                                   run_dir / "eval" / f"{name}.png")
    report["fingerprint"] = tokenizer.fingerprint()
    (run_dir / "eval" / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"held-out reconstruction: PSNR {report['psnr']:.2f} dB, oracle attribute accuracy "
        f"{report['oracle']['attribute_accuracy']:.3f}, codebook usage {report['usage']['share']:.3f}")
    return report


def main(run_dir: str, error_file: str | None = None) -> int:
    from harness.config import load_run_config
    from harness.rundir import RunDir

    run = RunDir(Path(run_dir))
    config = load_run_config(run.config_path)
    preempted: list[Preempted] = []

    def work() -> None:
        try:
            train_tokenizer(config, run.path, log=lambda msg: print(msg, flush=True))
        except Preempted as exc:  # checkpointed: a requeue, not a failure
            preempted.append(exc)

    run_job(work, error_file, "train_tokenizer")
    if preempted:
        print(f"train_tokenizer: {preempted[0]}; exiting for requeue", file=sys.stderr, flush=True)
        return CHECKPOINTED_EXIT
    return 0
