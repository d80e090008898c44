"""A tokenized dataset on disk: find it, build it (synthetic only), open it.

Only the synthetic smoke/micro datasets build themselves. A missing prebuilt dataset stops the run
with the command that restores it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from harness.config.schema import DataConfig
from harness import artifacts
from harness.data import portable, shards, synthetic, text_tokenizer
from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config
from harness.data.shards import Sample, ShardReader
from harness.data.vocab import VocabLayout
from harness.errors import HarnessError
from harness.progress import progress

BUILDER_KEYS = ("name", "image_size", "codebook_size", "text_vocab_size", "n_train", "n_val",
                "n_text_train", "n_text_val", "shard_size", "seed", "image_tokenizer", "image_tokenizer_sha256")
ENCODE_BATCH = 64
# data.corpus -> the shards it reads. Unconditional image models and caption-only LMs read the
# caption shards; the first keeps only the image, the second only the caption.
STORED_AS = {"captions": "captions", "images": "captions", "caption_text": "captions", "text": "text"}
WITH_IMAGES = ("captions", "images")
WITH_TEXT = ("captions", "caption_text", "text")


@dataclass(frozen=True)
class Dataset:
    root: Path
    manifest: dict[str, Any]
    data_hash: str

    def layout(self, corpus: str) -> VocabLayout:
        text = self.manifest["text_tokenizer"]
        specials = text["specials"]
        codebook = self.manifest["image_tokenizer"]["codebook_size"] if corpus in WITH_IMAGES else 0
        return VocabLayout(text["vocab_size"], specials["pad"], specials["bos"], specials["eos"], codebook)

    def shard_entries(self, corpus: str, split: str) -> list[dict]:
        stored = STORED_AS[corpus]
        try:
            return self.manifest["corpora"][stored][split]
        except KeyError:
            raise HarnessError(f"{self.root / shards.MANIFEST}: no {stored}/{split} split") from None

    def reader(self, corpus: str, split: str) -> ShardReader:
        return ShardReader(self.root / STORED_AS[corpus], self.shard_entries(corpus, split))


def dataset_dir(config: DataConfig, data_root: Path) -> Path:
    if config.kind != "synthetic":
        return data_root / config.name
    params = json.dumps({k: getattr(config, k) for k in BUILDER_KEYS}, sort_keys=True)
    return data_root / f"{config.name}-{hashlib.sha256(params.encode()).hexdigest()[:8]}"


class NotRestored(HarnessError):
    """An input under the data root that is not there yet: a dataset or model file restored by
    `dvc pull` (or a dataset the tokenize job makes). A dry run may go on without it; anything
    broken (a malformed manifest, a modified shard) is a plain HarnessError and fails it."""


def open_dataset(config: DataConfig, data_root: Path) -> Dataset:
    root = dataset_dir(config, data_root)
    if not (root / shards.MANIFEST).exists():
        raise NotRestored(f"dataset '{config.name}' is missing at {root}: {restore_command(config)}")
    try:
        manifest, data_hash = shards.read_manifest(root)  # a ManifestError names the file itself
    except OSError as exc:
        raise HarnessError(f"{root / shards.MANIFEST}: unreadable ({exc})") from None
    _check_manifest(root, manifest)
    return Dataset(root, manifest, data_hash)


# What every reader of a dataset looks up in its manifest (and, per shard entry, ENTRY_KEYS).
MANIFEST_KEYS = (("text_tokenizer", "file"), ("text_tokenizer", "sha256"), ("text_tokenizer", "vocab_size"),
                 ("text_tokenizer", "specials", "pad"), ("text_tokenizer", "specials", "bos"),
                 ("text_tokenizer", "specials", "eos"), ("image_tokenizer", "sha256"),
                 ("image_tokenizer", "codebook_size"), ("image_tokenizer", "weights"), ("corpora",))
ENTRY_KEYS = ("file", "sha256", "samples")


def _check_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """A hand-edited or foreign manifest fails here, naming itself and the field, rather than
    with a KeyError inside a job."""
    path = root / shards.MANIFEST
    for keys in MANIFEST_KEYS:
        try:
            functools.reduce(operator.getitem, keys, manifest)
        except (KeyError, TypeError, IndexError):
            raise HarnessError(f"{path}: not a dataset manifest this harness reads (no {'.'.join(keys)})") from None
    corpora = manifest["corpora"]
    if not (isinstance(corpora, dict) and all(isinstance(by_split, dict) and
                                              all(isinstance(e, list) for e in by_split.values())
                                              for by_split in corpora.values())):
        raise HarnessError(f"{path}: corpora must map corpus -> split -> [shard entries]")
    for name, entries in [(f"{c}.{s}", e) for c, by_split in corpora.items() for s, e in by_split.items()]:
        for entry in entries:
            if not (isinstance(entry, dict) and all(k in entry for k in ENTRY_KEYS)
                    and isinstance(entry["samples"], int) and entry["samples"] >= 0):
                raise HarnessError(f"{path}: corpora.{name}: a shard entry needs {', '.join(ENTRY_KEYS)} "
                                   f"(samples a count), found {entry!r}")


def check_not_empty(dataset: Dataset, corpus: str, split: str) -> None:
    """A split a run reads must hold samples: an empty one would leave training nothing to draw."""
    if sum(int(e["samples"]) for e in dataset.shard_entries(corpus, split)) == 0:
        raise HarnessError(f"{dataset.root / shards.MANIFEST}: the {STORED_AS[corpus]}/{split} split holds no "
                           f"samples ({len(dataset.shard_entries(corpus, split))} shards)")


def ensure_dataset(config: DataConfig, data_root: Path, log=print) -> Dataset:
    """Open the dataset, building it first if it is synthetic and not yet built, and check every
    shard against its manifest (unchanged files are not re-hashed: see verify_shards)."""
    if data_root.exists() and not data_root.is_dir():
        raise HarnessError(f"paths.data_root={data_root}: not a directory")
    root = dataset_dir(config, data_root)
    if config.kind == "synthetic" and not (root / shards.MANIFEST).exists():
        log(f"building synthetic dataset '{config.name}' at {root} (once; cached)")
        build_synthetic(config, root, log)
    dataset = open_dataset(config, data_root)
    verify_shards(dataset)
    return dataset


def verify_shards(dataset: Dataset) -> None:
    """Every shard's (and the text tokenizer's) sha256 must equal the manifest's. A file whose (size, mtime) was already
    verified for this manifest is not read again; the record lives in the user's cache directory,
    never in the (DVC-tracked) dataset directory."""
    cache_file = _verified_cache() / f"{dataset.data_hash}.json"
    try:
        verified = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        verified = {}
    tokenizer = dataset.manifest["text_tokenizer"]
    files = [(dataset.root / tokenizer["file"], tokenizer["sha256"])]  # the jobs decode text with it
    for corpus, splits in dataset.manifest["corpora"].items():
        files += [(dataset.root / corpus / e["file"], e["sha256"]) for entries in splits.values() for e in entries]
    for path, sha256 in files:
        if not path.is_file():
            raise HarnessError(f"{path} is missing: {_shard_restore_hint(dataset)}")
        stat = path.stat()
        key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
        if verified.get(key) == stamp:
            continue
        if shards.file_sha256(path) != sha256:
            raise HarnessError(f"{path}: sha256 differs from {dataset.root / shards.MANIFEST}: modified "
                               f"after it was versioned ({_shard_restore_hint(dataset)})")
        verified[key] = stamp
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(verified))


def _shard_restore_hint(dataset: Dataset) -> str:
    hint = "restore it with `dvc pull data.dvc`"
    if dataset.manifest.get("kind") == "synthetic":
        # A fresh clone's default remote may be empty; the synthetic sets rebuild byte for byte.
        hint += f", or delete {dataset.root} and it is rebuilt byte for byte on the next submit"
    return hint


def _verified_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harness" / "verified"


def restore_command(config: DataConfig) -> str:
    return (f"restore it with `dvc pull data.dvc`, or make it: `harness data raw data={config.name}` "
            f"then `harness submit experiment=tokenize data={config.name}`")


def build_synthetic(config: DataConfig, root: Path, log=print) -> None:
    """Build into a temporary sibling and rename, so a half-built dataset is never opened."""
    image_tokenizer = _image_tokenizer(config)  # a published one is checked before anything is written
    staging = root.with_name(f"{root.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = text_tokenizer.train_bpe(_bpe_corpus(config), config.text_vocab_size, staging / "tokenizer.json")
    image_tokenizer.save(staging / "image_tokenizer")
    corpora: dict[str, dict[str, list[dict]]] = {"captions": {}, "text": {}}
    for split, count in (("train", config.n_train), ("val", config.n_val)):
        samples = progress(_caption_samples(config, split, count, tokenizer, image_tokenizer), count,
                           f"{config.name} {split} images", "image", log)
        corpora["captions"][split] = shards.write_shards(samples, staging / "captions", split, config.shard_size)
    if image_tokenizer.near_boundary:  # see portable.py: the only latents another CPU could round otherwise
        log(f"warning: {image_tokenizer.near_boundary} latent value(s) lie within {portable.NEAR:g} of a rounding "
            "boundary: this build may differ in those codes on another CPU")
    for split, count in (("train", config.n_text_train), ("val", config.n_text_val)):
        samples = progress(_text_samples(config, split, count, tokenizer), count, f"{config.name} {split} documents",
                           "doc", log)
        corpora["text"][split] = shards.write_shards(samples, staging / "text", split, config.shard_size)
    shards.write_manifest(staging, {
        "name": config.name,
        "kind": "synthetic",
        "builder": {k: getattr(config, k) for k in BUILDER_KEYS},
        "text_tokenizer": {
            "file": "tokenizer.json", "sha256": shards.file_sha256(staging / "tokenizer.json"),
            "vocab_size": tokenizer.get_vocab_size(), "specials": text_tokenizer.special_ids(tokenizer),
            "kind": "byte-level BPE trained on the smoke corpora",
        },
        "image_tokenizer": {
            "directory": "image_tokenizer", "architecture": "MoVQ (diffusers VQModel, norm_type=spatial)",
            "weights": image_tokenizer.weights, "sha256": image_tokenizer.fingerprint(),
            "encoding": image_tokenizer.encoding,
            "codebook_size": config.codebook_size, "image_size": config.image_size,
            "tokens_per_image": image_tokenizer.tokens_per_image(config.image_size),
        },
        "corpora": corpora,
    })
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)


def _image_tokenizer(config: DataConfig) -> ImageTokenizer:
    """The published trained tokenizer the config names (checked against its fingerprint), or,
    when none is named, a MoVQ of seeded random weights with a codebook fitted to the data."""
    if not config.image_tokenizer:
        tokenizer = ImageTokenizer.random(tiny_movq_config(config.codebook_size), config.seed)
        tokenizer.fit_codebook(_codebook_images(config), config.seed)
        return tokenizer
    return published_image_tokenizer(config)


def published_image_tokenizer(config: DataConfig) -> ImageTokenizer:
    """The published tokenizer `data.image_tokenizer` names, refused unless its fingerprint is
    `data.image_tokenizer_sha256`, its codebook `data.codebook_size` and its encoding portable."""
    path = artifacts.artifact_path(config.image_tokenizer, "data.image_tokenizer")
    record = artifacts.provenance(path)
    tokenizer = ImageTokenizer.load(path, f"trained: harness/artifacts/{config.image_tokenizer} "
                                          f"(published from run {record.get('run')})")
    problems = []
    if tokenizer.encoding != portable.DESCRIPTION:
        problems.append("it does not use the portable encoding the versioned datasets need")
    if tokenizer.codebook_size != config.codebook_size:
        problems.append(f"its codebook has {tokenizer.codebook_size} codes, data.codebook_size is {config.codebook_size}")
    fingerprint = tokenizer.fingerprint()
    if fingerprint != config.image_tokenizer_sha256:
        problems.append(f"its fingerprint {fingerprint} differs from data.image_tokenizer_sha256="
                        f"{config.image_tokenizer_sha256 or '(unset)'}")
    if problems:
        raise HarnessError(f"data.image_tokenizer={config.image_tokenizer} ({path}): {'; '.join(problems)}")
    return tokenizer


def _codebook_images(config: DataConfig) -> np.ndarray:
    """The training images the smoke tokenizer's codebook is fitted to (at least 16 latents per code)."""
    per_image = (config.image_size // 8) ** 2
    count = min(config.n_train, -(-16 * config.codebook_size // per_image))
    return np.stack([synthetic.captioned_image(i, "train", config.image_size, config.seed).pixels
                     for i in range(count)])


def _bpe_corpus(config: DataConfig) -> Iterator[str]:
    for i in range(config.n_train):
        yield synthetic.captioned_image(i, "train", config.image_size, config.seed).caption
    for i in range(config.n_text_train):
        yield synthetic.text_document(i, "train", config.seed)[1]


def _caption_samples(config: DataConfig, split: str, count: int, tokenizer, image_tokenizer) -> Iterator[Sample]:
    for start in range(0, count, ENCODE_BATCH):
        batch = [synthetic.captioned_image(i, split, config.image_size, config.seed)
                 for i in range(start, min(start + ENCODE_BATCH, count))]
        codes = image_tokenizer.encode(np.stack([item.pixels for item in batch]))
        for item, item_codes in zip(batch, codes):
            ids = np.asarray(tokenizer.encode(item.caption).ids)
            yield Sample(item.sample_id, ids, item_codes, item.caption)


def _text_samples(config: DataConfig, split: str, count: int, tokenizer) -> Iterator[Sample]:
    for i in range(count):
        sample_id, text = synthetic.text_document(i, split, config.seed)
        yield Sample(sample_id, np.asarray(tokenizer.encode(text).ids), None, text)


def describe(dataset: Dataset) -> dict[str, Any]:
    """The provenance summary of a dataset. `root` is relative to the data root (a dataset lives
    directly under it: dataset_dir), so the record reads the same wherever the data root is mounted
    (harness/portable_paths.py)."""
    m = dataset.manifest
    return {"name": m["name"], "hash": dataset.data_hash, "root": dataset.root.name,
            "text_tokenizer": m["text_tokenizer"]["sha256"], "image_tokenizer": m["image_tokenizer"]["sha256"],
            "image_tokenizer_weights": m["image_tokenizer"]["weights"]}

