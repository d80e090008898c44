"""Launch-side latency: a paper-shape dry-run submit, and collect over many run directories.

    python -m bench.launch            # the real run
    python -m bench.launch --quick    # a check that it runs (fewer repeats, 100 runs to collect)

(a) `harness submit experiment=random_init cluster=a100_8x8 --dry-run` (one 8 nodes x 8 GPUs
    sbatch array), in-process: `harness.submit.submit(..., dry_run=True, out=StringIO())` with a
    temporary runs root, one warm-up call, then the median of --repeats calls. The paper's data
    need not be there: the dry run then prints provisional run ids. For reference also the wall
    time of the same command as a CLI subprocess (Python start-up and imports included).
    Target: < 1 s (in-process).
(b) `harness collect` over --runs synthetic run directories (tests/results/runs.py `write_run`,
    the layout the trainer writes), spread round-robin over the arms random_init, pretrained,
    pretrained_aligned, uncond_*, freeze_* and over seeds, a few not done (listed apart): the
    median of --collect-repeats calls of `harness.results.collect.build(root, link_base=root)`.
    Target: < 3 s.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import report
from harness.results import arms

NAME = "launch"
REPO = Path(__file__).resolve().parent.parent
SUBMIT_TARGET_S = 1.0
COLLECT_TARGET_S = 3.0
SAMPLE_ARMS = arms.INITS + arms.UNCONDITIONAL
ARMS = SAMPLE_ARMS + arms.FREEZING


def submit_overrides(runs_root: Path) -> list[str]:
    return ["experiment=random_init", "cluster=a100_8x8", f"paths.runs_root={runs_root}"]


def time_submit(runs_root: Path, repeats: int) -> tuple[list[float], str]:
    from harness.submit import submit

    overrides = submit_overrides(runs_root)
    warm = io.StringIO()
    submit(overrides, dry_run=True, out=warm)  # warm-up: imports, config loading, caches
    times = []
    for _ in range(repeats):
        out = io.StringIO()
        start = time.perf_counter()
        submit(overrides, dry_run=True, out=out)
        times.append(time.perf_counter() - start)
    return times, warm.getvalue()


def time_submit_cli(runs_root: Path, repeats: int) -> list[float]:
    harness = Path(sys.executable).with_name("harness")
    command = [str(harness)] if harness.exists() else [sys.executable, "-m", "harness"]
    command += ["submit", *submit_overrides(runs_root), "--dry-run"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"CLI dry run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return times


def write_runs(root: Path, count: int, failed_every: int) -> None:
    """`count` run directories, arm = i mod len(ARMS), seed = i div len(ARMS); every
    `failed_every`-th run (0: none) left not done."""
    sys.path.insert(0, str(REPO))
    from tests.results.runs import write_run

    for i in range(count):
        arm, seed = ARMS[i % len(ARMS)], i // len(ARMS)
        done = not (failed_every and i % failed_every == failed_every - 1)
        jitter = (i * 37 % 101) / 1000  # distinct numbers per run, deterministic
        write_run(root, arm, seed, done=done, loss_image=6.0 - jitter, loss_text=1.0 + jitter,
                  fd=(30.0 + 10 * jitter) if arm in SAMPLE_ARMS else None,
                  language={0: 0.4 + jitter} if arm in ("pretrained", "random_init") else None)


def time_collect(root: Path, repeats: int) -> tuple[list[float], int]:
    from harness.results.collect import build

    times, report_ = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        report_ = build(root, link_base=root)
        times.append(time.perf_counter() - start)
    return times, len(report_.text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed in-process dry-run submits (median)")
    parser.add_argument("--cli-repeats", type=int, default=3, help="timed CLI subprocess dry runs (median)")
    parser.add_argument("--runs", type=int, default=1000, help="synthetic run directories to collect")
    parser.add_argument("--failed-every", type=int, default=50,
                        help="every Nth synthetic run is left not done (0: all done)")
    parser.add_argument("--collect-repeats", type=int, default=3, help="timed collect builds (median)")
    parser.add_argument("--quick", action="store_true", help="3 submits, 1 CLI run, 100 runs collected once")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.cli_repeats, args.runs, args.collect_repeats = 3, 1, 100, 1

    figures: dict = {"mode": "quick" if args.quick else "full"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    try:
        runs_root = tmp / "runs"
        times, text = time_submit(runs_root, args.repeats)
        median = statistics.median(times)
        figures["submit_dry_run_s"] = median
        figures["submit_dry_run_ratio_to_target"] = median / SUBMIT_TARGET_S
        figures["submit_dry_run_min_max_s"] = f"{min(times):.3f} / {max(times):.3f} over {len(times)}"
        figures["submit_dry_run_provisional_ids"] = "provisional" in text
        figures["submit_dry_run_sbatch_nodes_8"] = "#SBATCH --nodes=8" in text and "--ntasks-per-node=8" in text
        if runs_root.exists() and any(runs_root.iterdir()):
            figures["submit_dry_run_wrote_under_runs_root"] = True
        cli = time_submit_cli(runs_root, args.cli_repeats)
        figures["submit_dry_run_cli_subprocess_s"] = statistics.median(cli)

        collect_root = tmp / "collect"
        collect_root.mkdir()
        start = time.perf_counter()
        write_runs(collect_root, args.runs, args.failed_every)
        figures["collect_runs"] = args.runs
        figures["collect_generate_runs_s"] = time.perf_counter() - start
        times, chars = time_collect(collect_root, args.collect_repeats)
        median = statistics.median(times)
        figures["collect_s"] = median
        figures["collect_ratio_to_target"] = median / COLLECT_TARGET_S
        figures["collect_min_max_s"] = f"{min(times):.3f} / {max(times):.3f} over {len(times)}"
        figures["collect_results_md_chars"] = chars
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    targets = {"submit_dry_run_s": f"< {SUBMIT_TARGET_S:g} s", "submit_dry_run_ratio_to_target": "< 1",
               "collect_s": f"< {COLLECT_TARGET_S:g} s", "collect_ratio_to_target": "< 1"}
    report(NAME + ("_quick" if args.quick else ""), figures, targets)  # never over a real result


if __name__ == "__main__":
    os.chdir(REPO)  # the CLI and the configs are found from the repository root
    main()
