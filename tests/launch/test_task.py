import pytest

from harness.config import compose_runs
from harness.launch.environment import torch_env
from harness.launch import task
from harness.launch.task import preflight


def config(*overrides):
    return compose_runs(list(overrides))[0].config


def test_torch_env_from_the_scheduler_view():
    env = torch_env("42_3", global_rank=9, local_rank=1, num_tasks=64, num_nodes=8,
                    hostnames=["gpu-a01", "gpu-a02"])
    assert env["RANK"] == "9" and env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "64"
    assert env["LOCAL_WORLD_SIZE"] == "8" and env["MASTER_ADDR"] == "gpu-a01"
    assert env["MASTER_PORT"] == torch_env("42_3", 0, 0, 64, 8, ["gpu-a01"])["MASTER_PORT"]
    # Never in Linux's default ephemeral range, where an outgoing connection may already hold it.
    assert all(20000 <= int(torch_env(str(j), 0, 0, 2, 1, ["n1"])["MASTER_PORT"]) < 32768 for j in range(1000))


def test_preflight_accepts_a_matching_allocation():
    assert preflight(config("cluster=a100_8x8", "scale=micro"), 64, 8, "0,1,2,3,4,5,6,7") is None
    assert preflight(config(), 2, 1, None) is None


def test_preflight_names_each_mismatch():
    paper = config("cluster=a100_8x8", "scale=micro")
    assert "32 tasks in the job, the run's world size is 64" in preflight(paper, 32, 8, "0,1,2,3,4,5,6,7")
    assert "4 nodes in the job, the profile asks for 8" in preflight(paper, 64, 4, "0,1,2,3,4,5,6,7")
    assert "4 visible GPU(s)" in preflight(paper, 64, 8, "0,1,2,3")
    assert "0 visible GPU(s)" in preflight(paper, 64, 8, None)


@pytest.mark.parametrize("recorded", ["relative", "absolute"])
def test_dataset_staging_copies_once_per_node(tmp_path, recorded):
    from harness.launch.task import stage_dataset

    data_root = tmp_path / "data"
    source = data_root / "micro-abc"
    source.mkdir(parents=True)
    (source / "manifest.json").write_text("{}")
    (source / "shard.tar").write_bytes(b"x" * 10)

    class Run:  # provenance records the dataset relative to the data root; older runs, absolute
        def provenance(self):
            return {"data": {"root": "micro-abc" if recorded == "relative" else str(source)}}

    scratch = tmp_path / "scratch"
    assert stage_dataset(Run(), str(data_root), str(scratch), local_rank=0) == str(scratch)
    assert (scratch / "micro-abc" / "shard.tar").read_bytes() == b"x" * 10
    (source / "shard.tar").write_bytes(b"changed")  # staged once: a second task on the node reuses it
    stage_dataset(Run(), str(data_root), str(scratch), local_rank=1)
    assert (scratch / "micro-abc" / "shard.tar").read_bytes() == b"x" * 10
    (source / "manifest.json").write_text('{"version": 2}')  # a new dataset version is staged again
    stage_dataset(Run(), str(data_root), str(scratch), local_rank=0)
    assert (scratch / "micro-abc" / "shard.tar").read_bytes() == b"changed"


def test_a_rank_killed_after_writing_its_reason_reports_both(tmp_path):
    record = task.RankRecord(tmp_path, rank=0, local_rank=0)
    assert record.failure(-6).endswith("trainer killed by SIGABRT")
    record.error_path.write_text("non-finite loss (nan) at step 10\n")
    assert record.failure(-6).endswith("trainer killed by SIGABRT after: non-finite loss (nan) at step 10")
    assert record.failure(1).endswith("trainer exit code 1: non-finite loss (nan) at step 10")
