"""Tokenized shards (webdataset tar files) and the versioned manifest that describes them.

A dataset directory holds `manifest.json` plus `<corpus>/<split>-NNNNNN.tar`. Each sample is one
tar member group keyed by its sample id: `text.npy` (int32 caption/document ids), optional
`image.npy` (int16 image code ids) and `txt` (the raw text, for evaluation and debugging).
Tar members carry fixed metadata so the same samples give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds

from harness.errors import HarnessError

MANIFEST = "manifest.json"
FORMAT = "harness-tokenized-shards"
VERSION = 1
SUPPORTED_VERSIONS = (1,)


@dataclass(frozen=True)
class Sample:
    sample_id: str
    text_ids: np.ndarray
    image_ids: np.ndarray | None = None
    text: str = ""
    source: str = ""  # the shard it was read from (errors about the sample name it); not stored


class ManifestError(HarnessError, ValueError):
    """A manifest or shard this reader cannot trust: unknown format or version, a shard that
    disagrees or a sample that lacks its ids. The message names the file."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shards(samples: Iterable[Sample], directory: Path, prefix: str, shard_size: int) -> list[dict]:
    """Write samples into tar shards of shard_size; returns one manifest entry per shard."""
    directory.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    writer, count = None, 0
    for sample in samples:
        if writer is None or count == shard_size:
            if writer is not None:
                entries.append(_close(writer, path, count))
            path = directory / f"{prefix}-{len(entries):06d}.tar"
            writer, count = wds.TarWriter(str(path), mtime=0.0, user="", group=""), 0
        writer.write(_encode(sample))
        count += 1
    if writer is not None:
        entries.append(_close(writer, path, count))
    return entries


def write_shard(samples: Iterable[Sample], path: Path) -> dict:
    """Write one shard under a temporary name, then rename: a crash never leaves a partial shard
    under the final name. Returns its manifest entry."""
    partial = path.with_name(path.name + ".partial")
    writer, count = wds.TarWriter(str(partial), mtime=0.0, user="", group=""), 0
    for sample in samples:
        writer.write(_encode(sample))
        count += 1
    writer.close()
    partial.replace(path)
    return {"file": path.name, "samples": count, "sha256": file_sha256(path)}


def _encode(sample: Sample) -> dict[str, Any]:
    record: dict[str, Any] = {"__key__": sample.sample_id, "txt": sample.text,
                              "text.npy": sample.text_ids.astype(np.int32)}
    if sample.image_ids is not None:
        record["image.npy"] = sample.image_ids.astype(np.int16)
    return record


def _close(writer: wds.TarWriter, path: Path, count: int) -> dict:
    writer.close()
    return {"file": path.name, "samples": count, "sha256": file_sha256(path)}


def write_manifest(root: Path, manifest: dict[str, Any]) -> str:
    """Write manifest.json (canonical JSON) and return the dataset hash: the manifest's sha256."""
    body = {"format": FORMAT, "version": VERSION, **manifest}
    text = json.dumps(body, indent=1, sort_keys=True) + "\n"
    (root / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(root: Path) -> tuple[dict[str, Any], str]:
    """The manifest and the dataset hash; refuses unknown formats and versions."""
    path = root / MANIFEST
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") not in SUPPORTED_VERSIONS:
        raise ManifestError(
            f"{path}: manifest version {manifest.get('version')!r} is not supported "
            f"(this reader knows {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    return manifest, hashlib.sha256(raw).hexdigest()


class ShardReader:
    """Random access to samples by (shard, offset); keeps the last few shards decoded in memory."""

    def __init__(self, directory: Path, shards: list[dict], cache_size: int = 2) -> None:
        self.directory = directory
        self.shards = shards
        self.cache: OrderedDict[int, list[Sample]] = OrderedDict()
        self.cache_size = cache_size

    def sample(self, shard: int, offset: int) -> Sample:
        return self._shard(shard)[offset]

    def _shard(self, index: int) -> list[Sample]:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        entry = self.shards[index]
        samples = list(read_shard(self.directory / entry["file"], entry.get("sha256")))
        if len(samples) != entry["samples"]:
            raise ManifestError(
                f"{self.directory / entry['file']}: {len(samples)} samples, manifest says {entry['samples']}"
            )
        self.cache[index] = samples
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return samples


def read_shard(path: Path, sha256: str | None = None) -> Iterator[Sample]:
    """Samples of one shard in stored order. A truncated, corrupt or (given its manifest sha256)
    modified shard raises naming the file, before any of its samples is used."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable shard ({exc})") from None
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ManifestError(f"{path}: sha256 differs from the manifest: modified after it was versioned "
                            "(restore it with `dvc pull`, or rebuild the dataset)")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            groups: OrderedDict[str, dict[str, bytes]] = OrderedDict()
            for member in tar:
                key, _, field = member.name.partition(".")
                groups.setdefault(key, {})[field] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ManifestError(f"{path}: unreadable shard ({exc})") from None
    for key, fields in groups.items():
        yield _decode(path, key, fields)


def _decode(path: Path, key: str, fields: dict[str, bytes]) -> Sample:
    if "text.npy" not in fields:
        raise ManifestError(f"{path}: sample {key!r} has no text.npy (it has {', '.join(sorted(fields)) or 'nothing'})")
    try:
        text_ids = _ids(fields["text.npy"])
        image = fields.get("image.npy")
        image_ids = None if image is None else _ids(image)
        text = fields.get("txt", b"").decode()
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: sample {key!r} is unreadable ({type(exc).__name__}: {exc})") from None
    return Sample(key, text_ids, image_ids, text, str(path))


def _ids(raw: bytes) -> np.ndarray:
    ids = np.load(io.BytesIO(raw), allow_pickle=False)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be a 1-d integer array, found {ids.dtype} of shape {ids.shape}")
    return ids
