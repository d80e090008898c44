import json

import numpy as np
import pytest

from harness.data import shards
from harness.data.shards import ManifestError, Sample, ShardReader


def make_samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(f"s-{i:04d}", rng.integers(0, 500, size=i % 7 + 1), rng.integers(0, 16384, size=16), f"cap {i}")
            for i in range(n)]


def test_round_trip_keeps_every_field(tmp_path):
    samples = make_samples(10)
    entries = shards.write_shards(samples, tmp_path, "train", shard_size=4)
    assert [e["samples"] for e in entries] == [4, 4, 2]
    reader = ShardReader(tmp_path, entries)
    for i, original in enumerate(samples):
        got = reader.sample(i // 4, i % 4)
        assert got.sample_id == original.sample_id and got.text == original.text
        assert np.array_equal(got.text_ids, original.text_ids) and got.text_ids.dtype == np.int32
        assert np.array_equal(got.image_ids, original.image_ids) and got.image_ids.dtype == np.int16


def test_shards_are_byte_identical_when_rewritten(tmp_path):
    first = shards.write_shards(make_samples(6), tmp_path / "a", "train", 4)
    second = shards.write_shards(make_samples(6), tmp_path / "b", "train", 4)
    assert [e["sha256"] for e in first] == [e["sha256"] for e in second]


def test_manifest_round_trip_and_hash(tmp_path):
    data_hash = shards.write_manifest(tmp_path, {"name": "x", "corpora": {}})
    manifest, read_hash = shards.read_manifest(tmp_path)
    assert manifest["version"] == shards.VERSION and read_hash == data_hash


@pytest.mark.parametrize("change, message", [
    ({"version": 99}, "manifest version 99 is not supported"),
    ({"format": "other"}, "format 'other' is not"),
])
def test_reader_refuses_unknown_manifests(tmp_path, change, message):
    shards.write_manifest(tmp_path, {"name": "x"})
    manifest = json.loads((tmp_path / shards.MANIFEST).read_text())
    (tmp_path / shards.MANIFEST).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ManifestError, match=message):
        shards.read_manifest(tmp_path)


def test_a_truncated_shard_is_refused_naming_the_file(tmp_path):
    entries = shards.write_shards(make_samples(4), tmp_path, "train", 4)
    path = tmp_path / entries[0]["file"]
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ManifestError, match=str(path)):
        ShardReader(tmp_path, entries).sample(0, 0)


def test_a_shard_that_disagrees_with_the_manifest_is_refused(tmp_path):
    entries = shards.write_shards(make_samples(4), tmp_path, "train", 4)
    entries[0]["samples"] = 5
    with pytest.raises(ManifestError, match="4 samples, manifest says 5"):
        ShardReader(tmp_path, entries).sample(0, 0)


def test_the_reader_refuses_a_shard_whose_bytes_differ_from_the_manifest(tmp_path):
    entries = shards.write_shards(make_samples(4), tmp_path, "train", 4)
    path = tmp_path / entries[0]["file"]
    raw = bytearray(path.read_bytes())
    raw[600] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="sha256 differs from the manifest"):
        ShardReader(tmp_path, entries).sample(0, 0)
