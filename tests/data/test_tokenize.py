"""The tokenize job: raw shapes shards -> tokenized shards + manifest, in-process and on Slurm."""

import dataclasses
import json
from pathlib import Path

import pytest

from harness.config import compose_runs
from harness.data import raw, shards
from harness.data.dataset import open_dataset
from harness.data.tokenize import make_raw, tokenize_part
from harness.errors import HarnessError
from tests.conftest import run_cli

SHAPES = ["data=shapes", "data.raw.n_train=96", "data.raw.n_val=32", "data.shard_size=32"]


def shapes_config(data_root: Path, *extra: str):
    config = compose_runs(["experiment=tokenize", *SHAPES, f"paths.data_root={data_root}", *extra])[0].config
    return config


def spoil_first_train_shard(data_root: Path) -> None:
    """One undecodable image and one empty caption in train-000000."""
    path = data_root / "raw/shapes/train/train-000000.tar"
    samples = list(raw.read_raw_shard(path))
    samples[3] = dataclasses.replace(samples[3], image=b"not an image at all")
    samples[5] = dataclasses.replace(samples[5], caption="  ")
    raw.write_raw_shards(samples, path.parent, "train", shard_size=len(samples))


@pytest.fixture
def raw_shapes(tmp_path: Path) -> Path:
    make_raw(shapes_config(tmp_path).data, tmp_path, log=lambda _msg: None)
    spoil_first_train_shard(tmp_path)
    return tmp_path


def part(config, index: int):
    return dataclasses.replace(config, tokenize=dataclasses.replace(config.tokenize, part=index))


def test_parts_split_the_shards_and_the_last_one_writes_the_manifest(raw_shapes):
    config = shapes_config(raw_shapes)
    first = tokenize_part(part(config, 0), raw_shapes, log=lambda _msg: None)
    assert first["shards"] == 2 and not first["manifest"]  # train 0 and 2 (round robin over 4 shards)
    with pytest.raises(HarnessError, match="missing"):
        open_dataset(config.data, raw_shapes)
    second = tokenize_part(part(config, 1), raw_shapes, log=lambda _msg: None)
    assert second["shards"] == 2 and second["manifest"]  # train 1 and val 0
    dataset = open_dataset(config.data, raw_shapes)
    assert [e["samples"] for e in dataset.shard_entries("captions", "train")] == [30, 32, 32]
    assert dataset.manifest["builder"]["skipped"] == {"undecodable_image": 1, "empty_caption": 1}
    report = json.loads((dataset.root / "reports/train-000000.json").read_text())
    assert report["samples_in"] == 32 and report["written"] == 30
    spoiled = list(raw.read_raw_shard(Path(report["raw"])))[3].key
    assert report["skipped_examples"]["undecodable_image"] == [spoiled]
    sample = dataset.reader("captions", "train").sample(0, 0)
    assert len(sample.image_ids) == 64 and sample.text_ids.size > 0
    layout = dataset.layout("captions")
    assert (layout.pad, layout.bos, layout.eos) == (0, 1, 2)


def test_a_rerun_skips_finished_shards_and_redoes_a_lost_one(raw_shapes):
    config = shapes_config(raw_shapes, "tokenize.parts=1")
    tokenize_part(config, raw_shapes, log=lambda _msg: None)
    out = raw_shapes / "shapes" / "captions"
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "train-000001.tar").unlink()
    again = tokenize_part(config, raw_shapes, log=lambda _msg: None)
    assert again["resumed"] == 3 and again["shards"] == 4
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_a_corrupt_raw_shard_is_named_and_finished_shards_stay(raw_shapes):
    bad = raw_shapes / "raw/shapes/train/train-000002.tar"
    bad.write_bytes(bad.read_bytes()[:3000])
    config = shapes_config(raw_shapes, "tokenize.parts=1")
    with pytest.raises(HarnessError, match="train-000002.tar"):
        tokenize_part(config, raw_shapes, log=lambda _msg: None)
    assert (raw_shapes / "shapes/reports/train-000001.json").exists()
    assert not (raw_shapes / "shapes" / shards.MANIFEST).exists()


def test_missing_raw_shards_and_tokenizers_are_named(tmp_path):
    result = run_cli("submit", "--dry-run", "experiment=tokenize", *SHAPES, f"paths.data_root={tmp_path}")
    assert result.returncode == 2 and "data.raw.train" in result.stderr and "harness data raw" in result.stderr
    make_raw(shapes_config(tmp_path).data, tmp_path, log=lambda _msg: None)
    (tmp_path / "raw/shapes/tokenizer.json").unlink()
    with pytest.raises(HarnessError, match="tokenizer.json does not exist"):
        tokenize_part(shapes_config(tmp_path), tmp_path, log=lambda _msg: None)


def test_the_tokenize_job_runs_as_a_two_task_array_on_slurm(slurm_cluster, raw_shapes, tmp_path):
    runs_root = tmp_path / "runs"
    result = run_cli("submit", "--wait", "experiment=tokenize", *SHAPES, "cluster=slurm_ci",
                     f"paths.data_root={raw_shapes}", f"paths.runs_root={runs_root}")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted((runs_root / "tokenize").iterdir())
    jobs = [json.loads((r / "provenance.json").read_text())["attempts"][-1]["job_id"] for r in runs]
    assert len(runs) == 2 and {j.split("_")[0] for j in jobs} == {jobs[0].split("_")[0]}  # one array
    assert sorted(j.split("_")[1] for j in jobs) == ["0", "1"]
    dataset = open_dataset(shapes_config(raw_shapes).data, raw_shapes)
    assert dataset.manifest["builder"]["skipped"] == {"undecodable_image": 1, "empty_caption": 1}
    summaries = [json.loads((r / "tokenize.json").read_text()) for r in runs]
    assert [s["shards"] for s in summaries] == [2, 2] and sum(s["written"] for s in summaries) == 126
