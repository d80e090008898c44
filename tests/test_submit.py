"""`harness submit` against itself: two submits of one config at the same moment."""

import subprocess
import sys

from harness.rundir import find_runs
from tests.conftest import micro_args

# A submitter whose code snapshot takes 3 s to freeze: the window between reading a run's state and
# recording its attempt, where a second submitter would otherwise start the same run again.
SLOW_SUBMIT = """
import sys, time
from harness.launch import snapshot
freeze = snapshot.freeze
snapshot.freeze = lambda *args: (time.sleep(3), freeze(*args))[1]
from harness.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_two_submits_at_once_give_one_run_and_one_job(tmp_path, data_root):
    runs_root = tmp_path / "runs"
    command = [sys.executable, "-c", SLOW_SUBMIT, "submit", "experiment=random_init", *micro_args(runs_root, data_root)]
    submitters = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(s.wait(timeout=300), *s.communicate()) for s in submitters]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    (run,) = find_runs(runs_root)
    assert len(run.attempts()) == 1 and run.done_path.exists()
    outputs = sorted(out for _, out, _ in results)
    assert sum(f"done in {run.path}" in out for out in outputs) == 1, outputs
    assert sum(("already pending or running" in out or "already done" in out) for out in outputs) == 1, outputs
