"""Paths in committed run files: relative to the runs root or the data root, absolute outside both
(harness/portable_paths.py)."""

from pathlib import Path

from harness.data.dataset import Dataset, describe
from harness.portable_paths import portable, resolve


def test_a_path_under_its_root_is_written_relative_and_resolves_back(tmp_path):
    root = tmp_path / "runs"
    recorded = portable(root / "random_init" / "0123456789" / "eval" / "image@150.json", root)
    assert recorded == "random_init/0123456789/eval/image@150.json"
    assert resolve(recorded, tmp_path / "moved") == tmp_path / "moved" / recorded
    assert portable(root, root) == "." and resolve(".", root) == root


def test_a_path_outside_its_root_stays_absolute_and_old_absolute_records_read_as_they_stand(tmp_path):
    outside = tmp_path / "cache" / "fid_reference" / "x.npz"
    assert portable(outside, tmp_path / "runs") == str(outside)
    assert portable(tmp_path / "runs-other" / "a", tmp_path / "runs") == str(tmp_path / "runs-other" / "a")
    # Written before this convention (results/smoke): an absolute path is read as it stands.
    assert resolve("/tmp/repro-data/smoke-a079fa34", tmp_path) == Path("/tmp/repro-data/smoke-a079fa34")


def test_a_root_reached_through_a_link_still_gives_a_relative_path(tmp_path):
    (tmp_path / "real" / "smoke-abc").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert portable(tmp_path / "real" / "smoke-abc", tmp_path / "link") == "smoke-abc"
    assert portable(tmp_path / "link" / "smoke-abc", tmp_path / "real") == "smoke-abc"


def test_the_data_provenance_names_the_dataset_relative_to_the_data_root(tmp_path):
    dataset = Dataset(tmp_path / "data" / "micro-1234abcd", {
        "name": "micro", "text_tokenizer": {"sha256": "t"}, "image_tokenizer": {"sha256": "i", "weights": "w"}}, "h")
    described = describe(dataset)
    assert described["root"] == "micro-1234abcd"
    assert resolve(described["root"], tmp_path / "data") == dataset.root
