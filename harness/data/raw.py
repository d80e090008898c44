"""Raw image-caption shards: the input of a tokenize job, and the downloader that makes them.

A raw shard is a webdataset tar whose samples are member groups keyed by sample key:
`<key>.jpg` (or png/webp), `<key>.txt` (the caption) and `<key>.json` (metadata: caption, url,
status, sizes). That is img2dataset's output layout, so shards img2dataset wrote for the public
substitute datasets (CC12M, COCO 2014 val) read the same as the ones written here.

`download` does what img2dataset does for those datasets, with only the standard library and PIL:
fetch, decode, resize the shorter side and centre-crop, re-encode JPEG. Shards are cut by input
row (shard i holds rows [i*shard_size, (i+1)*shard_size)), as img2dataset does, so a re-run knows
which rows a finished shard covers and skips it without fetching anything.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import tarfile
import urllib.error
import urllib.request
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from harness.data.synthetic import captioned_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # reader preference order when a key has several
JPEG_QUALITY = 95  # img2dataset's default encode_quality
DOWNLOAD_PREFIX = "raw"
REPORT = "download_report.json"
USER_AGENT = "harness-raw-download/1 (+img2dataset-compatible)"


@dataclass(frozen=True)
class RawSample:
    key: str
    image: bytes | None
    image_ext: str
    caption: str
    meta: dict = field(default_factory=dict)


# --- writing ----------------------------------------------------------------------------------

def write_raw_shards(samples: Iterable[RawSample], directory: Path, prefix: str, shard_size: int) -> list[Path]:
    """Write samples into `<prefix>-NNNNNN.tar` shards of shard_size; returns the shard paths."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    directory.mkdir(parents=True, exist_ok=True)
    stream, paths = iter(samples), []
    while (first := next(stream, None)) is not None:
        path = directory / f"{prefix}-{len(paths):06d}.tar"
        _write_tar(itertools.chain([first], itertools.islice(stream, shard_size - 1)), path)
        paths.append(path)
    return paths


def _write_tar(samples: Iterable[RawSample], path: Path) -> int:
    """One shard, written under `.partial` and renamed, so the final name only ever holds a whole
    shard (resumable downloads trust that name). Returns the number of samples written."""
    partial = path.with_name(path.name + ".partial")
    seen: set[str] = set()
    try:
        with open(partial, "wb") as f:
            # Fixed owner and mtime: identical samples give byte-identical shards.
            writer = wds.TarWriter(f, mtime=0.0, user="", group="", encoder=False)
            try:
                for sample in samples:
                    if sample.key in seen:
                        raise ValueError(f"{path}: duplicate sample key {sample.key!r}")
                    seen.add(sample.key)
                    writer.write(_record(sample))
            finally:
                writer.close()  # also on error: an unclosed tar stream writes into a closed file later
            f.flush()
            os.fsync(f.fileno())  # the rename must not outlive the bytes on a crash
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return len(seen)


def _record(sample: RawSample) -> dict[str, bytes | str]:
    name = sample.key.rpartition("/")[2]
    if not name or "." in name:
        # webdataset splits the key at the first dot of the basename: a dot would split the sample.
        raise ValueError(f"sample key {sample.key!r} must be non-empty and contain no '.'")
    meta = {"url": None, "status": "success", **sample.meta, "key": sample.key, "caption": sample.caption}
    record: dict[str, bytes | str] = {
        "__key__": sample.key,
        "txt": sample.caption.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }
    if sample.image is not None:
        if sample.image_ext not in IMAGE_EXTS:
            raise ValueError(f"sample {sample.key!r}: image_ext {sample.image_ext!r} is not one of {IMAGE_EXTS}")
        record[sample.image_ext] = bytes(sample.image)
    return record


# --- reading ----------------------------------------------------------------------------------

def read_raw_shard(path: Path) -> Iterator[RawSample]:
    """Samples of one raw shard (ours or img2dataset's) in stored order. A truncated or corrupt
    shard raises ValueError naming the file before any of its samples is used."""
    groups = _read_groups(path)
    for key, fields in groups.items():
        yield _sample(path, key, fields)


def _read_groups(path: Path) -> OrderedDict[str, dict[str, bytes]]:
    groups: OrderedDict[str, dict[str, bytes]] = OrderedDict()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                key, ext = _split_name(member)
                if key is not None:
                    groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
            _check_end_marker(path, tar)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable raw shard ({exc})") from None
    return groups


def _split_name(member: tarfile.TarInfo) -> tuple[str | None, str]:
    """(key, extension) as webdataset's base_plus_ext: the key ends at the first dot of the
    basename. Non-files, dot-less names and dotfiles (macOS `._x` debris) are not sample fields."""
    basename = member.name.rpartition("/")[2]
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", member.name)
    if not member.isfile() or basename.startswith(".") or match is None:
        return None, ""
    return match.group(1), match.group(2).lower()


def _check_end_marker(path: Path, tar: tarfile.TarFile) -> None:
    # tarfile stops silently when a file is cut exactly between members; a whole archive ends
    # with zero blocks, so their absence means the tail (and its samples) is missing.
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise ValueError(f"{path}: truncated raw shard (no end-of-archive marker)")


def _sample(path: Path, key: str, fields: dict[str, bytes]) -> RawSample:
    try:
        meta = json.loads(fields["json"]) if "json" in fields else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: sample {key!r} has corrupt json metadata ({exc})") from None
    if "txt" in fields:
        caption = fields["txt"].decode("utf-8", errors="replace")
    else:
        caption = meta.get("caption") or ""  # img2dataset keeps the caption in json too
    ext = next((e for e in IMAGE_EXTS if e in fields), "")
    return RawSample(key, fields[ext] if ext else None, ext, caption, meta)


def list_raw_shards(spec: str) -> list[Path]:
    """Shards named by a directory (its *.tar, sorted), a brace pattern (`/d/{00000..00009}.tar`),
    or either with a `file://` prefix. Missing shards raise FileNotFoundError naming them."""
    local = spec[len("file://"):] if spec.startswith("file://") else spec
    if re.match(r"^[a-z][a-z0-9+.-]*://|^pipe:", local):
        raise ValueError(f"{spec}: only local paths and file:// are supported for raw shards")
    if Path(local).is_dir():
        paths = sorted(Path(local).glob("*.tar"))
        if not paths:
            raise FileNotFoundError(f"{spec}: directory holds no .tar shards")
        return paths
    paths = [Path(p) for p in braceexpand(local)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"missing raw shard(s): {', '.join(missing[:5])}{more}")
    return paths


# --- synthetic shapes -------------------------------------------------------------------------

def build_shapes_raw(directory: Path, split: str, count: int, image_size: int, seed: int,
                     shard_size: int) -> list[Path]:
    """Raw shards of the synthetic shapes corpus: the same input path a real dataset takes."""
    def samples() -> Iterator[RawSample]:
        for index in range(count):
            item = captioned_image(index, split, image_size, seed)
            meta = {"url": f"synthetic://shapes/{split}/{index}", "width": image_size, "height": image_size}
            yield RawSample(item.sample_id, _jpeg(Image.fromarray(item.pixels)), "jpg", item.caption, meta)
    return write_raw_shards(samples(), directory, split, shard_size)


def _jpeg(image: Image.Image) -> bytes:
    # Fixed quality and subsampling, no optimisation pass: same pixels, same bytes.
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return out.getvalue()


# --- downloading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Row:
    index: int
    url: str
    caption: str


@dataclass(frozen=True)
class _Fetched:
    sample: RawSample | None
    failure: str | None


def download(url_list: Path, directory: Path, image_size: int, shard_size: int, processes: int = 4,
             timeout_s: float = 10, columns: tuple[str, ...] | None = None) -> dict:
    """img2dataset-equivalent download of a url/caption TSV into raw shards plus download_report.json.

    `columns` names the columns of a header-less file (CC12M's is url<TAB>caption); without it the
    first line is the header. Failed rows are skipped and counted by reason; finished shards are
    kept and not fetched again."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    directory.mkdir(parents=True, exist_ok=True)
    rows, written, failed, shards, resumed = 0, 0, Counter(), [], 0
    with ThreadPoolExecutor(max_workers=processes) as pool:
        for number, chunk in enumerate(_chunks(_read_rows(url_list, columns), shard_size)):
            path = directory / f"{DOWNLOAD_PREFIX}-{number:06d}.tar"
            rows += len(chunk)
            if path.is_file():
                stats, resumed = _read_stats(path), resumed + 1
            else:
                # pool.map yields in input order, whatever order the fetches finish in.
                results = list(pool.map(lambda row: _fetch_row(row, image_size, timeout_s), chunk))
                stats = _write_download_shard(path, results)
            written += stats.get("written", 0)
            failed.update(stats.get("failed", {}))
            shards.append(path.name)
    report = {"rows": rows, "written": written, "failed": dict(sorted(failed.items())),
              "shards": shards, "resumed_shards": resumed}
    _write_json(directory / REPORT, report)
    return report


def _read_rows(url_list: Path, columns: tuple[str, ...] | None) -> Iterator[_Row]:
    with open(url_list, newline="", encoding="utf-8") as f:
        # QUOTE_NONE: captions contain quote characters that are not CSV quoting.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = list(columns) if columns is not None else next(reader, [])
        if "url" not in names or "caption" not in names:
            raise ValueError(f"{url_list}: needs 'url' and 'caption' columns, has {names} "
                             "(pass columns=('url', 'caption') for a header-less file)")
        url_at, caption_at = names.index("url"), names.index("caption")
        for index, fields in enumerate(reader):
            url = fields[url_at].strip() if len(fields) > url_at else ""
            caption = fields[caption_at] if len(fields) > caption_at else ""
            yield _Row(index, url, caption)


def _chunks(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _fetch_row(row: _Row, image_size: int, timeout_s: float) -> _Fetched:
    """One row to a sample, or to the reason it failed; never raises for a bad URL or image."""
    data, failure = _fetch(row.url, timeout_s)
    if data is None:
        return _Fetched(None, failure)
    try:
        with Image.open(io.BytesIO(data)) as image:
            original = image.size
            resized = center_crop(image.convert("RGB"), image_size)
    except Exception:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        return _Fetched(None, "decode_error")
    meta = {"url": row.url, "status": "success", "row": row.index, "width": image_size,
            "height": image_size, "original_width": original[0], "original_height": original[1]}
    return _Fetched(RawSample(f"{row.index:09d}", _jpeg(resized), "jpg", row.caption, meta), None)


def _fetch(url: str, timeout_s: float) -> tuple[bytes | None, str | None]:
    if not url.startswith(("http://", "https://", "file://")):
        return None, "unsupported_url"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read(), None
    except urllib.error.HTTPError:
        return None, "http_error"
    except urllib.error.URLError as exc:
        return None, "timeout" if isinstance(exc.reason, TimeoutError) else "fetch_error"
    except TimeoutError:
        return None, "timeout"
    except (OSError, ValueError):  # connection reset, malformed URL, ...
        return None, "fetch_error"


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """img2dataset's "center_crop" resize mode: shorter side to size, then the central square.
    Area-style (BOX) filter when shrinking and Lanczos when enlarging, as img2dataset's defaults."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    filter_ = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), filter_)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _write_download_shard(path: Path, results: list[_Fetched]) -> dict:
    """The shard plus its stats sidecar; the sidecar goes first so a finished shard always has one
    and a resumed run's report still counts that shard's rows."""
    stats = {"written": sum(r.sample is not None for r in results),
             "failed": dict(sorted(Counter(r.failure for r in results if r.failure).items()))}
    _write_json(_stats_path(path), stats)
    _write_tar((r.sample for r in results if r.sample is not None), path)  # may be empty: rows done
    return stats


def _read_stats(path: Path) -> dict:
    try:
        return json.loads(_stats_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a shard from elsewhere (e.g. img2dataset) without our sidecar: counts unknown


def _stats_path(path: Path) -> Path:
    return path.with_name(path.stem + "_stats.json")  # img2dataset's sidecar name pattern


def _write_json(path: Path, body: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)
