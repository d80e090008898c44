"""The image evaluation job (`experiment=eval_image eval.run=<exp>/<run_id> eval.step=N`).

For a trained run's checkpoint: held-out losses, images generated from validation captions
(saved as grids), the Fréchet distance of their features to the real images' (FID with the
Inception network, "clean-FID" or "TF-FID" by clean-fid's mode, see eval/fid.py; "FD (shapes
classifier)" over the synthetic world's versioned classifier at the small scales), the caption
compliance of synthetic images (eval/compliance.py), and CLIP
score where a local CLIP model is configured. Results go into the trained run's directory:
`eval/image@<step>.json`, `eval/val_loss@<step>.json` and `eval/image@<step>/samples/`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from harness.artifacts import artifact_path
from harness.config.schema import RunConfig
from harness.data import raw, synthetic
from harness.data.dataset import WITH_TEXT, Dataset, open_dataset
from harness.data.image_tokenizer import ImageTokenizer
from harness.data.shards import Sample
from harness.data.tokenize import data_path, raw_pixels
from harness.errors import HarnessError, run_job
from harness.eval import compliance, fid
from harness.eval.generate import Sampling, generate
from harness.eval.target import load_model, trained_config
from harness.eval.losses import held_out_losses, val_positions, write_val_loss
from harness.portable_paths import portable
from harness.progress import progress
from harness.rundir import RunDir, utc_now
from harness.tracking import log_evaluation


def evaluate_image(config: RunConfig, log=print) -> dict | None:
    """This part's samples; the metric once every part is done (returned by the last part)."""
    settings, data_root = config.eval, Path(config.paths.data_root)
    target = RunDir(Path(config.paths.runs_root) / settings.run)
    trained = trained_config(target)
    eval_data = _eval_data(config, trained)
    dataset = open_dataset(eval_data, data_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, step = (untrained_model(trained, data_root, settings.step, device) if settings.untrained
                   else load_model(target, settings.step, device))
    out = target.path / "eval" / f"image@{step}"
    sampling = Sampling(settings.temperature, settings.top_k, settings.top_p, settings.cfg_scale, settings.seed)
    extractor = _extractor(config, eval_data.image_size, device)
    result_path = out.parent / f"image@{step}.json"
    earlier = _earlier_result(result_path, {
        "sampling": dataclasses.asdict(sampling), "samples": settings.samples, "dataset": dataset.data_hash,
        "extractor": extractor.identity, "fid_mode": extractor.fid_mode})
    if earlier is not None:
        log(f"already evaluated: {result_path}")
        return earlier
    # The trainer already scored the held-out split at its end (and every eval_every_steps): one
    # file per step, never overwritten by a second computation on other sample counts.
    if settings.part == 0 and not (target.path / "eval" / f"val_loss@{step}.json").exists():
        trained_dataset = open_dataset(trained.data, data_root)
        losses = held_out_losses(model, trained_dataset, trained.data.corpus, trained.data.seq_len,
                                 settings.batch_size, limit=settings.loss_samples)
        write_val_loss(target.path, step, losses, trained_dataset.data_hash)
        log(f"held-out loss_text {_fmt(losses['loss_text'])}  loss_image {_fmt(losses['loss_image'])}")
    first, last = _chunk(settings.samples, settings.parts, settings.part)
    captions = _captions(dataset, eval_data, first, last)
    tokenizer = ImageTokenizer.load(dataset.root / dataset.manifest["image_tokenizer"]["directory"],
                                    dataset.manifest["image_tokenizer"]["weights"], device=device)
    images = _generate_images(model, tokenizer, captions, dataset, sampling, settings.batch_size, first,
                              with_text=trained.data.corpus in WITH_TEXT, log=log)
    _save_grids(images, out / "samples", f"part{settings.part:03d}", settings.grid)
    # The real images' statistics are cached once per (dataset, extractor, count): read and
    # featurise them only while that cache does not exist.
    real = None
    if not _reference_cache(dataset, extractor, settings.samples).exists():
        ids = [c.sample_id for c in captions]
        real = extractor.features(np.stack(list(progress(_real_images(eval_data, ids, dataset.root.parent),
                                                         len(ids), "real images", "image", log))))
    # The synthetic world's captions can be checked against the images (compliance.py); real ones cannot.
    checked = (compliance.tally(images, [c.text for c in captions])
               if dataset.manifest.get("kind") == "synthetic" else None)
    _save_part(out, settings.part, extractor.features(images), real, captions, checked)
    log(f"part {settings.part}/{settings.parts}: {len(images)} images generated and featurised")
    result = _finalize(out, config, extractor, dataset, target, step, sampling)
    if result is not None:
        log(f"{result['metric']} {result['value']:.3f} over {result['samples']} samples -> {result_path}")
        log_evaluation(config, target, step, _scalars(result))
    return result


def _scalars(result: dict) -> dict[str, float | None]:
    """What the views show of an image evaluation."""
    shown = {"fd" if "FD" in result["metric"] else "fid": result["value"], "clip_score": (result.get("clip_score") or {}).get("value")}
    if result.get("compliance"):
        shown["compliance_whole_caption"] = result["compliance"]["whole_caption"]
        shown.update({f"compliance_{name}": found["accuracy"]
                      for name, found in result["compliance"]["attributes"].items()})
    return shown


def _earlier_result(result_path: Path, wanted: dict) -> dict | None:
    """One result per checkpoint: the one already written when it was made with these settings (an
    evaluation run again); with others (sampling, sample count, reference data, extractor), an
    error, since regenerating would leave samples beside a result that no longer describes them."""
    if not result_path.exists():
        return None
    try:
        earlier = json.loads(result_path.read_text())
    except (OSError, ValueError) as error:
        raise HarnessError(f"{result_path} is unreadable ({error}); move it away to evaluate again") from None
    found = {key: earlier.get(key) for key in wanted}
    if found != wanted:
        differ = {key: (found[key], wanted[key]) for key in wanted if found[key] != wanted[key]}
        raise HarnessError(f"{result_path} already holds an evaluation made with other settings "
                           f"(written, asked: {differ}). It and its samples are kept: move that file and "
                           f"{result_path.with_suffix('')}/ away to evaluate this checkpoint again")
    return earlier


def untrained_model(trained: RunConfig, data_root: Path, step: int, device: torch.device):
    """The trained run's model at step 0 (its own seeded random init, over its own dataset's
    vocabulary): the reference an image metric must tell a trained model from. Only a random-init
    run has one without its sources."""
    if step:
        raise HarnessError(f"eval.untrained=true evaluates step 0; eval.step={step} contradicts it")
    if trained.init.strategy != "random":
        raise HarnessError(f"eval.untrained: {trained.experiment} starts from init.strategy="
                           f"{trained.init.strategy}; evaluate a random-init run's step 0")
    from harness.model.init import build_model

    dataset = open_dataset(trained.data, data_root)
    return build_model(trained, dataset.layout(trained.data.corpus)).to(device).eval(), 0


def _finalize(out: Path, config: RunConfig, extractor: fid.Extractor, dataset: Dataset, target: RunDir,
              step: int, sampling: Sampling) -> dict | None:
    """The metric over all parts, written once by whichever part completes the set (under a lock)."""
    settings = config.eval
    with open(out / ".finalize.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        parts = [out / "parts" / f"{p:03d}.npz" for p in range(settings.parts)]
        result_path = out.parent / f"image@{step}.json"
        if not all(p.exists() for p in parts) or result_path.exists():
            return None
        loaded = [np.load(p) for p in parts]
        fake = fid.Statistics.of(np.concatenate([part["fake"] for part in loaded]))
        cache = _reference_cache(dataset, extractor, settings.samples)
        if not cache.exists() and any("real" not in part for part in loaded):
            raise HarnessError(f"reference statistics {cache} vanished while parts relied on them; resubmit")
        real = (fid.Statistics.load(cache) if cache.exists()
                else fid.Statistics.of(np.concatenate([part["real"] for part in loaded])))
        if not cache.exists():
            real.save(cache)
        texts = [t for part in loaded for t in part["captions"].tolist()]
        result = {
            "run": target.name, "step": step, "metric": extractor.metric, "value": fid.frechet_distance(fake, real),
            "samples": fake.count, "extractor": extractor.identity, "fid_mode": extractor.fid_mode,
            # The user's cache directory is outside both roots: absolute (the collector compares its name).
            "reference": str(cache),
            "dataset": dataset.data_hash, "image_tokenizer": dataset.manifest["image_tokenizer"]["weights"],
            "sampling": dataclasses.asdict(sampling),
            "sample_seeds": "per sample: sha256(f'{seed}:{global index}'), 63 bits (see eval/generate.py)",
            "image_span": "only image codes are sampled between <boi> and the last code (see eval/generate.py)",
            "clip_score": _clip_score(config, out / "samples", texts),
            "compliance": (compliance.summarise(np.concatenate([part["compliance"] for part in loaded]))
                           if all("compliance" in part for part in loaded) else None),
            "file": portable(result_path, config.paths.runs_root), "written": utc_now(),
        }
        result_path.write_text(json.dumps(result, indent=1) + "\n")
        return result


def _save_part(out: Path, part: int, fake: np.ndarray, real: np.ndarray | None, captions: list[Sample],
               checked: np.ndarray | None) -> None:
    directory = out / "parts"
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{part:03d}.partial.npz"
    arrays = {"fake": fake, "captions": np.array([c.text for c in captions])}
    optional = {"real": real, "compliance": checked}
    np.savez(partial, **arrays, **{k: v for k, v in optional.items() if v is not None})
    partial.replace(directory / f"{part:03d}.npz")


def _chunk(total: int, parts: int, part: int) -> tuple[int, int]:
    size = -(-total // parts)
    return min(part * size, total), min((part + 1) * size, total)


def _eval_data(config: RunConfig, trained: RunConfig):
    """The data config captions and references come from: eval.data, else the trained run's."""
    if not config.eval.data:
        return trained.data
    from harness.config import compose_runs

    return compose_runs([f"data={config.eval.data}", f"paths.data_root={config.paths.data_root}"])[0].config.data


def _captions(dataset: Dataset, data, first: int, last: int) -> list[Sample]:
    """Validation samples [first, last) in stored order: the captions generated from."""
    reader = dataset.reader("captions", "val")
    positions = val_positions(dataset, "captions", last)[first:]
    if len(positions) < last - first:
        raise HarnessError(f"eval.samples={last}: the validation split of '{data.name}' has only "
                           f"{first + len(positions)} samples")
    return [reader.sample(shard, offset) for shard, offset in positions]


def _real_images(data, sample_ids: list[str], data_root: Path) -> Iterator[np.ndarray]:
    """Synthetic datasets regenerate their images; tokenized ones read their raw val shards."""
    size = data.image_size
    if data.kind == "synthetic":
        for sample_id in sample_ids:  # "<split>-<index>", as the synthetic builder names them
            split, index = sample_id.rsplit("-", 1)
            yield synthetic.captioned_image(int(index), split, size, data.seed).pixels
        return
    wanted, found = set(sample_ids), {}
    spec = data_path(data.raw.val, data_root)
    for path in raw.list_raw_shards(str(spec)):
        for sample in raw.read_raw_shard(path):
            if sample.key in wanted:
                found[sample.key], _ = raw_pixels(sample, size)  # decoded as the tokenize job did
    for sample_id in sample_ids:
        yield found[sample_id]


def _generate_images(model, tokenizer, captions, dataset, sampling, batch_size, first: int,
                     with_text: bool = True, log=None) -> np.ndarray:
    """Each sample draws from a generator seeded by (eval.seed, its global index `first + i`; see
    generate.sample_seed): parts and batch sizes do not change which image a caption gets."""
    layout = dataset.layout("captions")
    per_image = dataset.manifest["image_tokenizer"]["tokens_per_image"]
    images = []
    batches = range(0, len(captions), batch_size)
    for start in progress(batches, len(batches), "generate", "batch", log):
        chunk = captions[start:start + batch_size]
        codes = generate(model, [c.text_ids.tolist() for c in chunk], layout, per_image, sampling,
                         with_text=with_text, first_index=first + start)
        images.append(tokenizer.decode_to_uint8(codes))
    return np.concatenate(images)


def _save_grids(images: np.ndarray, directory: Path, prefix: str, per_grid: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(per_grid)))
    for number, start in enumerate(range(0, len(images), per_grid)):
        chunk = images[start:start + per_grid]
        h, w = chunk.shape[1:3]
        grid = np.zeros((side * h, side * w, 3), dtype=np.uint8)
        for i, image in enumerate(chunk):
            grid[(i // side) * h:(i // side + 1) * h, (i % side) * w:(i % side + 1) * w] = image
        Image.fromarray(grid).save(directory / f"{prefix}-grid{number:03d}.png")
        np.save(directory / f"{prefix}-images{number:03d}.npy", chunk)


def _extractor(config: RunConfig, image_size: int, device: torch.device) -> fid.Extractor:
    if config.eval.inception:
        return fid.inception(data_path(config.eval.inception, Path(config.paths.data_root)),
                             config.eval.inception_sha256, str(device), mode=config.eval.fid_mode)
    if config.eval.features:
        return fid.shapes_classifier(artifact_path(config.eval.features, "eval.features"),
                                     config.eval.features_sha256, image_size)
    raise HarnessError("no feature extractor for the Fréchet distance: set eval.inception (Inception, real "
                       "images) or eval.features (the shapes classifier, synthetic images)")


def _clip_score(config: RunConfig, samples: Path, texts: list[str]) -> dict:
    """100 * mean max(cosine(image, caption), 0) with a local CLIP model (transformers)."""
    if not config.eval.clip:
        return {"value": None, "note": "not computed: eval.clip (a local CLIP model directory) is not set"}
    path = data_path(config.eval.clip, Path(config.paths.data_root))
    if not (path / "config.json").exists():
        raise HarnessError(f"CLIP model {path} not found (eval.clip: a transformers CLIPModel directory)")
    from transformers import CLIPModel, CLIPProcessor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
    processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
    images = np.concatenate([np.load(p) for p in sorted(samples.glob("*-images*.npy"))])
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            inputs = processor(text=texts[start:start + 32], images=list(images[start:start + 32]),
                               return_tensors="pt", padding=True, truncation=True).to(device)
            out = model(**inputs)
            cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
            scores.append((100 * cosine.clamp(min=0)).cpu())
    return {"value": float(torch.cat(scores).mean()), "model": portable(path, config.paths.data_root)}


def _reference_cache(dataset: Dataset, extractor: fid.Extractor, count: int) -> Path:
    """Reference statistics per (dataset version, extractor, sample count), in the user's cache
    directory: never inside the DVC-tracked dataset."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "fid_reference"
    return base / f"{dataset.data_hash[:16]}-{_slug(extractor.identity)}-{count}.npz"


def _chunks(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), size):
        yield images[start:start + size]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)[:80]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(run_dir: str, error_file: str | None = None) -> int:
    """One part of an eval_image job."""
    from harness.config import load_run_config

    run = RunDir(Path(run_dir))
    config = load_run_config(run.config_path)

    def work() -> None:
        result = evaluate_image(config, log=lambda msg: print(msg, flush=True))
        summary = result or {"part": config.eval.part, "note": "featurised; another part computes the metric"}
        (run.path / "result.json").write_text(json.dumps(summary, indent=1) + "\n")

    return run_job(work, error_file, "eval")
