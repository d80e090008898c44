"""The run directory's metrics.jsonl reader: a cut, corrupt or foreign line ends what is readable
and is reported by its number."""

from harness.rundir import read_metrics, read_metrics_strict


def test_a_cut_corrupt_or_non_object_line_is_reported_by_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    for bad in ('{"step": 3, "lo', "3", "[1, 2]", b"\xff\xfe".decode("latin-1")):
        path.write_bytes((good + bad + "\n").encode("latin-1"))
        records, cut = read_metrics_strict(path)
        assert [r["step"] for r in records] == [1, 2] and cut == 3, bad
        assert read_metrics(path) == records
    path.write_text(good)
    assert read_metrics_strict(path) == ([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], None)
    assert read_metrics_strict(tmp_path / "absent.jsonl") == ([], None)
