"""The tokenize job: raw image-caption shards -> tokenized shards + manifest (`experiment=tokenize`).

Each raw shard becomes one tokenized shard of the same split and index, so the work splits into
independent shard tasks. A run of the job is one part of `tokenize.parts` (one array task); part p
takes every parts-th shard. A finished shard (its report and output present, hashes agreeing) is
skipped, so a resubmitted or requeued part resumes. Samples whose image does not decode, or whose
caption is empty, are skipped and counted in the shard's report. The part that finishes the last
shard writes the manifest, under a lock; until then the dataset does not open.

Output, in the dataset directory (data_root/<data.name>):
    captions/<split>-NNNNNN.tar   tokenized shards (harness.data.shards format)
    reports/<split>-NNNNNN.json   per-shard report: counts in, written, skipped by reason
    tokenizer.json, image_tokenizer/, manifest.json   once every shard is done
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from harness.config.schema import DataConfig, RunConfig
from harness.data import raw, shards
from harness.data.dataset import NotRestored, dataset_dir
from harness.errors import HarnessError, run_job
from harness.progress import progress

SPLITS = ("train", "val")
EXAMPLE_KEYS = 5  # skipped sample keys kept per reason in a report


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    raw: Path

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


def data_path(value: str, data_root: Path) -> Path:
    """A configured data path: file:// stripped, relative to the data root."""
    path = Path(value.removeprefix("file://"))
    return path if path.is_absolute() else data_root / path


def shard_tasks(data: DataConfig, data_root: Path) -> list[ShardTask]:
    """Every raw shard of every configured split, in a fixed order. Missing shards are named."""
    tasks: list[ShardTask] = []
    for split in SPLITS:
        spec = getattr(data.raw, split)
        if not spec:
            continue
        where = str(data_path(spec, data_root))
        try:
            paths = raw.list_raw_shards(where)
        except (FileNotFoundError, ValueError) as exc:
            # Not made yet (`harness show` says so and goes on); a malformed spec is an error.
            kind = NotRestored if isinstance(exc, FileNotFoundError) else HarnessError
            raise kind(f"data.raw.{split}={spec!r}: {exc} (make them with `harness data raw "
                       f"data={data.name}`)") from None
        tasks += [ShardTask(split, i, p) for i, p in enumerate(paths)]
    if not tasks:
        raise HarnessError(f"data '{data.name}' names no raw shards (data.raw.train / data.raw.val)")
    return tasks


def raw_fingerprint(tasks: list[ShardTask]) -> str:
    """What the job reads, cheaply: each raw shard's name, path and size."""
    listing = [(t.name, str(t.raw), t.raw.stat().st_size) for t in tasks]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


# --- one part ----------------------------------------------------------------------------------

def tokenize_part(config: RunConfig, data_root: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tokenize this part's shards (skipping finished ones); write the manifest if all are done."""
    tasks = shard_tasks(config.data, data_root)
    out = dataset_dir(config.data, data_root)
    mine = tasks[config.tokenize.part::config.tokenize.parts]
    tokenizers = Tokenizers.load(config.data, data_root, config.tokenize.device)
    done, totals = 0, Counter()
    for task in progress(mine, len(mine), f"tokenize part {config.tokenize.part}", "shard"):
        report = _finished_report(out, task)
        if report is None:
            started = time.time()
            report = tokenize_shard(task, out, tokenizers, config)
            log(f"{task.name}: {report['written']}/{report['samples_in']} samples written, skipped "
                f"{dict(report['skipped']) or 'none'} ({time.time() - started:.1f} s)")
        else:
            done += 1
        totals.update(report["skipped"])
        totals["written"] += report["written"]
    if done:
        log(f"{done} of {len(mine)} shards were already done (skipped)")
    finished = finalize(out, tasks, tokenizers, config)
    log("manifest written: the dataset is complete" if finished else "other parts still running")
    return {"part": config.tokenize.part, "shards": len(mine), "resumed": done, **totals,
            "manifest": finished}


def _finished_report(out: Path, task: ShardTask) -> dict | None:
    report_path = out / "reports" / f"{task.name}.json"
    if not report_path.exists():
        return None
    report = json.loads(report_path.read_text())
    shard = out / "captions" / report["entry"]["file"]
    if shard.exists() and shards.file_sha256(shard) == report["entry"]["sha256"]:
        return report
    return None  # a report without its shard (or a changed shard): redo it


def tokenize_shard(task: ShardTask, out: Path, tokenizers: "Tokenizers", config: RunConfig) -> dict:
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    samples_in = 0

    def usable() -> Iterator[tuple[str, np.ndarray, str]]:
        nonlocal samples_in
        for sample in raw.read_raw_shard(task.raw):
            samples_in += 1
            pixels, reason = raw_pixels(sample, config.data.image_size)
            if reason is None and not sample.caption.strip():
                reason = "empty_caption"
            if reason is not None:
                skipped[reason] += 1
                keys = examples.setdefault(reason, [])
                if len(keys) < EXAMPLE_KEYS:
                    keys.append(sample.key)
                continue
            yield sample.key, pixels, sample.caption

    try:
        encoded = _encode(usable(), tokenizers, config.tokenize.batch_size)
        (out / "captions").mkdir(parents=True, exist_ok=True)
        entry = shards.write_shard(encoded, out / "captions" / f"{task.name}.tar")
    except ValueError as exc:  # an unreadable raw shard: fail naming it; finished shards stay
        raise HarnessError(f"raw shard {task.raw}: {exc}") from None
    report = {"shard": task.name, "raw": str(task.raw), "samples_in": samples_in, "written": entry["samples"],
              "skipped": dict(skipped), "skipped_examples": examples, "entry": entry}
    _write_json(out / "reports" / f"{task.name}.json", report)
    return report


def raw_pixels(sample: raw.RawSample, size: int) -> tuple[np.ndarray | None, str | None]:
    if sample.image is None:
        return None, "missing_image"
    try:
        image = Image.open(io.BytesIO(sample.image))
        image.load()
    except Exception:  # PIL raises many types for truncated or foreign bytes
        return None, "undecodable_image"
    image = image.convert("RGB")
    if image.size != (size, size):
        image = raw.center_crop(image, size)
    return np.asarray(image, dtype=np.uint8), None


def _encode(items: Iterator[tuple[str, np.ndarray, str]], tokenizers: "Tokenizers",
            batch_size: int) -> Iterator[shards.Sample]:
    batch: list[tuple[str, np.ndarray, str]] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield from tokenizers.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizers.encode_batch(batch)


# --- tokenizers --------------------------------------------------------------------------------

@dataclass
class Tokenizers:
    text: Any
    specials: dict[str, int]
    text_path: Path
    image: Any  # harness.data.image_tokenizer.ImageTokenizer
    vocab_size: int

    @classmethod
    def load(cls, data: DataConfig, data_root: Path, device: str) -> "Tokenizers":
        import torch

        from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config

        cfg = data.tokenizer
        text_path, text, specials = load_text_tokenizer(data, data_root)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if data.image_tokenizer:  # a tokenizer trained and published by the harness (the small world's)
            from harness.data.dataset import published_image_tokenizer

            image = published_image_tokenizer(data).to(device)
        elif cfg.image_variant == "tiny":
            image = ImageTokenizer.random(tiny_movq_config(data.codebook_size), data.seed, device=device)
        else:
            architecture = data_path(cfg.image_config, data_root) if cfg.image_config else cfg.image_variant
            image = ImageTokenizer.from_sber_checkpoint(data_path(cfg.image_weights, data_root), architecture,
                                                        device=device)
        if image.codebook_size != data.codebook_size:
            raise HarnessError(f"image tokenizer codebook {image.codebook_size} != data.codebook_size="
                               f"{data.codebook_size}")
        return cls(text, specials, text_path, image, data.text_vocab_size)

    def encode_batch(self, batch: list[tuple[str, np.ndarray, str]]) -> Iterator[shards.Sample]:
        codes = self.image.encode(np.stack([pixels for _, pixels, _ in batch]))
        for (key, _, caption), item_codes in zip(batch, codes):
            ids = np.asarray(self.text.encode(caption, add_special_tokens=False).ids)
            yield shards.Sample(key, ids, item_codes, caption)


def load_text_tokenizer(data: DataConfig, data_root: Path) -> tuple[Path, Any, dict[str, int]]:
    """The configured tokenizer.json, its special ids checked, and no larger than the vocabulary the
    data declares. The planner calls it too: a missing or malformed file is refused at submit."""
    from harness.data import text_tokenizer

    cfg = data.tokenizer
    if not cfg.text:
        raise HarnessError(f"data '{data.name}': data.tokenizer.text (a tokenizer.json) is not set")
    text_path = data_path(cfg.text, data_root)
    text, specials = text_tokenizer.load_configured(text_path, cfg.pad_token, cfg.bos_token, cfg.eos_token)
    if text.get_vocab_size() > data.text_vocab_size:
        raise HarnessError(f"{text_path} has {text.get_vocab_size()} tokens, more than "
                           f"data.text_vocab_size={data.text_vocab_size}")
    return text_path, text, specials


# --- the manifest ------------------------------------------------------------------------------

def finalize(out: Path, tasks: list[ShardTask], tokenizers: Tokenizers, config: RunConfig) -> bool:
    """Write the manifest once every shard has its report. Parts race here: a lock decides."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".finalize.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / shards.MANIFEST).exists():
            return True
        reports = [_finished_report(out, t) for t in tasks]
        if any(r is None for r in reports):
            return False
        _write_manifest(out, tasks, reports, tokenizers, config)
    return True


def _write_manifest(out: Path, tasks: list[ShardTask], reports: list[dict], tokenizers: Tokenizers,
                    config: RunConfig) -> None:
    shutil.copyfile(tokenizers.text_path, out / "tokenizer.json")
    tokenizers.image.save(out / "image_tokenizer")
    data = config.data
    corpora: dict[str, list[dict]] = {}
    for task, report in zip(tasks, reports):
        corpora.setdefault(task.split, []).append(report["entry"])
    skipped = Counter()
    for report in reports:
        skipped.update(report["skipped"])
    shards.write_manifest(out, {
        "name": data.name,
        "kind": "tokenized",
        "builder": {"raw": {s: getattr(data.raw, s) for s in SPLITS}, "raw_fingerprint": raw_fingerprint(tasks),
                    "samples_in": sum(r["samples_in"] for r in reports), "skipped": dict(skipped)},
        "text_tokenizer": {
            "file": "tokenizer.json", "sha256": shards.file_sha256(out / "tokenizer.json"),
            "vocab_size": tokenizers.vocab_size, "specials": tokenizers.specials,
            "kind": f"{tokenizers.text_path.name} from {tokenizers.text_path}",
        },
        "image_tokenizer": {
            "directory": "image_tokenizer", "architecture": "MoVQ (diffusers VQModel, norm_type=spatial)",
            "weights": tokenizers.image.weights, "sha256": tokenizers.image.fingerprint(),
            "encoding": tokenizers.image.encoding,
            "codebook_size": data.codebook_size, "image_size": data.image_size,
            "tokens_per_image": tokenizers.image.tokens_per_image(data.image_size),
        },
        "corpora": {"captions": corpora},
    })


def _write_json(path: Path, body: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    partial.replace(path)


# --- the worker entry point --------------------------------------------------------------------

def main(run_dir: str, error_file: str | None = None) -> int:
    """One part, in a task of the job array."""
    from harness.config import load_run_config
    from harness.rundir import RunDir

    run = RunDir(Path(run_dir))
    config = load_run_config(run.config_path)
    prefix = f"tokenize part {config.tokenize.part}/{config.tokenize.parts}"

    def work() -> None:
        summary = tokenize_part(config, Path(config.paths.data_root), lambda msg: print(f"{prefix}: {msg}", flush=True))
        _write_json(run.path / "tokenize.json", summary)

    return run_job(work, error_file, "tokenize")


# --- making the raw shards (`harness data raw`) ------------------------------------------------

def make_raw(data: DataConfig, data_root: Path, log: Callable[[str], None] = print) -> None:
    """Produce the raw shards a data config names: fetch its url lists, or draw synthetic shapes
    (with a BPE trained on their captions as the text tokenizer, for offline smoke runs)."""
    if data.raw.source == "external":
        raise HarnessError(f"data '{data.name}': raw shards are made outside the harness "
                           f"(data.raw.source=external); see the comments in jobs/data/{data.name}.yaml")
    for split in SPLITS:
        spec = getattr(data.raw, split)
        if not spec:
            continue
        directory = data_path(spec, data_root)
        if data.raw.source == "shapes":
            count = getattr(data.raw, f"n_{split}")
            paths = raw.build_shapes_raw(directory, split, count, data.image_size, data.seed, data.shard_size)
            log(f"{directory}: {len(paths)} shards, {count} synthetic images")
        else:
            urls = getattr(data.raw, f"{split}_urls")
            if not urls:
                raise HarnessError(f"data '{data.name}': data.raw.{split}_urls is not set")
            report = raw.download(data_path(urls, data_root), directory, data.image_size, data.shard_size,
                                  columns=tuple(data.raw.url_columns) or None)
            log(f"{directory}: {report['written']}/{report['rows']} written, failed {report['failed']}")
    if data.raw.source == "shapes":
        _train_shapes_tokenizer(data, data_root, log)


def _train_shapes_tokenizer(data: DataConfig, data_root: Path, log: Callable[[str], None]) -> None:
    from harness.data import synthetic, text_tokenizer

    path = data_path(data.tokenizer.text, data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    captions = (synthetic.captioned_image(i, "train", data.image_size, data.seed).caption
                for i in range(data.raw.n_train))
    text_tokenizer.train_bpe(captions, data.text_vocab_size, path)
    log(f"{path}: byte-level BPE trained on the shapes captions")
