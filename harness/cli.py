"""The `harness` command.

    harness submit [--dry-run] [--force] KEY=VALUE ...   compose, launch, (locally) wait
    harness show KEY=VALUE ...                           resolved config and run id; runs nothing
    harness list                                         experiments
    harness status [RUN|EXPERIMENT]                      table of runs: state, step, loss, age
    harness logs RUN [-f] [--rank N]                     the latest attempt's trainer log
    harness cancel RUN|EXPERIMENT                        cancel pending/running attempts
    harness export RUN [--step N] [--output DIR]         one fp32 model file from a checkpoint
    harness data build KEY=VALUE ...                     build (once) the synthetic dataset selected
    harness data raw KEY=VALUE ...                       make raw image-caption shards (download/shapes)
    harness collect [--runs-root DIR] [--output FILE] [--force]   RESULTS.md from run directories
    harness reproduce [--seeds N] KEY=VALUE ...          every experiment, its evaluations, collect
    harness reproduce --beyond KEY=VALUE ...             the questions beyond the paper instead
    harness estimate KEY=VALUE ...                       tokens/s per GPU, MFU, wall time, GPU-hours
    harness worker RUN_DIR                               (internal) one rank of a run's job
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import typing
from pathlib import Path

import yaml

from harness.errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # Options may come between overrides (`submit experiment=x --wait seed=1`): argparse leaves
        # the overrides after an option unparsed; they are overrides all the same.
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.handler(args) or 0
    except HarnessError as exc:
        print(f"harness: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    """An error is one line: a control character a value brought into it (a newline in an override)
    is shown escaped rather than breaking the line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message.strip())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # One line like every other error (argparse's own puts the usage text above it).
        print(f"harness: error: {_one_line(message)} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _at_least(low: int):
    """An argparse type: an integer >= low (`--seeds 0` would run nothing and report success)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Reproduce arXiv 2311.16201.")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="compose an experiment and launch it")
    submit.add_argument("overrides", nargs="*", help="experiment=NAME key=value ... (a,b sweeps)")
    submit.add_argument("--dry-run", action="store_true", help="print what would be submitted; write nothing")
    submit.add_argument("--force", action="store_true", help="start over even if done or running")
    submit.add_argument("--wait", action="store_true", help="for Slurm runs: wait until they end")
    submit.set_defaults(handler=_submit)

    show = commands.add_parser("show", help="print the resolved config and run id (builds missing "
                               "synthetic data, which names the run; trains nothing)")
    show.add_argument("overrides", nargs="*")
    show.set_defaults(handler=_show)

    commands.add_parser("list", help="list experiments").set_defaults(handler=_list)

    status = commands.add_parser("status", help="state of runs")
    status.add_argument("selector", nargs="?", help="experiment/run_id, run id (prefix) or experiment")
    status.add_argument("--runs-root", type=Path, default=None)
    status.set_defaults(handler=_status)

    logs = commands.add_parser("logs", help="a run's latest trainer log")
    logs.add_argument("selector")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--rank", type=_at_least(0), default=0)
    logs.add_argument("--runs-root", type=Path, default=None)
    logs.set_defaults(handler=_logs)

    cancel = commands.add_parser("cancel", help="cancel runs")
    cancel.add_argument("selector")
    cancel.add_argument("--runs-root", type=Path, default=None)
    cancel.set_defaults(handler=_cancel)

    tb = commands.add_parser("tb", help="print the command that opens TensorBoard over the runs")
    tb.add_argument("experiment", nargs="?", help="only this experiment's runs")
    tb.add_argument("--runs-root", type=Path, default=None)
    tb.set_defaults(handler=_tb)

    collect = commands.add_parser("collect", help="render RESULTS.md from run directories")
    collect.add_argument("--runs-root", type=Path, default=None)
    collect.add_argument("--output", type=Path, default=Path("RESULTS.md"))
    collect.add_argument("--force", action="store_true", help="write a report even from a runs root with no runs")
    collect.set_defaults(handler=_collect)

    reproduce = commands.add_parser("reproduce", help="every experiment in dependency order, seeds per "
                                    "arm, their evaluations, then collect")
    reproduce.add_argument("overrides", nargs="*", help="e.g. scale=smoke cluster=slurm_ci")
    reproduce.add_argument("--seeds", type=_at_least(1), default=3, help="seeds per arm (0..N-1)")
    reproduce.add_argument("--output", type=Path, default=Path("RESULTS.md"))
    reproduce.add_argument("--beyond", action="store_true", help="the questions beyond the paper (text-loss "
                           "weighting, text mixing, LM sizes, image tokenizer) and the arms they compare against")
    reproduce.set_defaults(handler=_reproduce)

    data = commands.add_parser("data", help="datasets: build the synthetic ones, make raw shards")
    data.add_argument("action", choices=["build", "raw"])
    data.add_argument("overrides", nargs="*", help="e.g. scale=micro (selects data=...)")
    data.set_defaults(handler=_data)

    export = commands.add_parser("export", help="consolidate a checkpoint into one fp32 model file")
    export.add_argument("selector", help="experiment/run_id or run id")
    export.add_argument("--step", type=_at_least(0), default=None, help="default: the newest complete checkpoint")
    export.add_argument("--runs-root", type=Path, default=None)
    export.add_argument("--output", type=Path, default=None,
                        help="directory for model.pt (default: the run's checkpoints/export-step<N>/); "
                             "e.g. data/checkpoints/<name> to version it with DVC")
    export.set_defaults(handler=_export)

    publish = commands.add_parser("publish", help="version a train_tokenizer/train_classifier run's artifact "
                                  "under harness/artifacts/ (what configs name with its hash)")
    publish.add_argument("selector", help="experiment/run_id or run id")
    publish.add_argument("--name", default=None, help="default: tokenizer-<scale> or classifier-<scale>")
    publish.add_argument("--runs-root", type=Path, default=None)
    publish.set_defaults(handler=_publish)

    estimate = commands.add_parser("estimate", help="parameters, tokens, FLOPs, wall time and GPU-hours of "
                                   "the composed runs, beside the paper's main run; runs nothing")
    estimate.add_argument("overrides", nargs="*", help="e.g. experiment=random_init cluster=a100_8x8")
    estimate.add_argument("--bench-results", type=Path, default=None,
                          help="benchmark results directory (default: bench/results in this checkout)")
    estimate.set_defaults(handler=_estimate)

    commands.add_parser("selftest", help="check this install: a micro forward/backward pass").set_defaults(
        handler=_selftest)

    worker = commands.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("run_dir")
    worker.add_argument("--error-file", help="where to write a one-line failure reason")
    worker.set_defaults(handler=_worker)
    return parser


def _submit(args: argparse.Namespace) -> int:
    from harness.submit import submit

    from harness.status import TERMINAL, status_rows

    runs = submit(args.overrides, force=args.force, dry_run=args.dry_run, wait=args.wait, out=sys.stdout)
    if args.wait and any(r.state != "done" and r.state in TERMINAL for r in status_rows(runs)):
        return 1
    return 0


def _show(args: argparse.Namespace) -> int:
    from harness.config import compose_runs, to_dict
    from harness.plan import plan

    for composed in compose_runs(args.overrides):
        print(f"# overrides: {' '.join(composed.overrides) or '(none)'}")
        print(yaml.safe_dump(to_dict(composed.config), sort_keys=False), end="")
    from harness.data.dataset import NotRestored

    # `show` shows the config whatever the planner says of it; the planner's refusal is printed
    # (a submit or dry run of it exits 2 with the same words).
    try:
        for planned in plan(args.overrides, log=lambda msg: print(f"# {msg}", file=sys.stderr)):
            print(f"run: {planned.run.name}  ({planned.state.value}; {planned.run.path})")
    except NotRestored as exc:
        print(f"run id: unknown until its inputs exist ({exc})")
    except HarnessError as exc:
        print(f"run id: none, a submit would be refused ({exc})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from harness.config.compose import list_experiments, list_groups

    print("\n".join(list_experiments()))
    print("\n".join(f"{group}  (group: experiment={group} submits its experiments together)"
                     for group in list_groups()))
    return 0


def _tb(args: argparse.Namespace) -> int:
    from harness.tracking import tensorboard_command

    print(tensorboard_command(_runs_root(args.runs_root), args.experiment))
    return 0


def _collect(args: argparse.Namespace) -> int:
    from harness.results.collect import render
    from harness.rundir import find_runs

    runs_root = _runs_root(args.runs_root)
    if not args.output.parent.is_dir():
        raise HarnessError(f"--output {args.output}: directory {args.output.parent} does not exist")
    report = render(runs_root, args.output, force=args.force)
    for problem in report.unreadable:  # listed apart in the report; said here too, so nobody misses it
        print(f"harness: warning: {problem} (listed apart in {args.output})", file=sys.stderr)
    print(f"wrote {args.output} from {len(find_runs(runs_root))} run(s) under {runs_root}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from harness.results.reproduce import reproduce

    return 1 if reproduce(args.overrides, args.seeds, args.output, beyond=args.beyond) else 0


def _runs_root(given: Path | None) -> Path:
    """--runs-root, else the user's default (paths.runs_root in their defaults), else ./runs."""
    if given is not None:
        return given
    from harness.config.compose import user_defaults

    chosen = [o.split("=", 1)[1] for o in user_defaults() if o.startswith("paths.runs_root=")]
    return Path(chosen[-1] if chosen else "runs")


def _one_run(args: argparse.Namespace):
    from harness.status import resolve

    runs = resolve(_runs_root(args.runs_root), args.selector)
    if len(runs) != 1:
        raise HarnessError(f"'{args.selector}' matches {len(runs)} runs: {', '.join(r.name for r in runs)}")
    return runs[0]


def _status(args: argparse.Namespace) -> int:
    from harness.status import UNREADABLE, render_table, resolve, status_rows

    runs = resolve(_runs_root(args.runs_root), args.selector)
    rows = status_rows(runs)
    print(render_table(rows) if rows else f"no runs under {_runs_root(args.runs_root)}")
    unreadable = [r for r in rows if r.state == UNREADABLE]
    for row in unreadable:
        print(f"harness: error: {row.note}", file=sys.stderr)
    return 1 if unreadable else 0


def _logs(args: argparse.Namespace) -> int:
    from harness.status import show_logs

    show_logs(_one_run(args), args.rank, args.follow)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from harness.status import cancel, resolve

    if cancel(resolve(_runs_root(args.runs_root), args.selector)) == 0:
        print("nothing to cancel")
    return 0


def _data(args: argparse.Namespace) -> int:
    from harness.config import compose_runs
    from harness.data.dataset import ensure_dataset

    for composed in compose_runs(args.overrides):
        config = composed.config
        if args.action == "raw":
            from harness.data.tokenize import make_raw

            make_raw(config.data, Path(config.paths.data_root))
            continue
        dataset = ensure_dataset(config.data, Path(config.paths.data_root))
        print(f"{dataset.root}: data hash {dataset.data_hash}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from harness.train.export import export

    print(f"wrote {export(_one_run(args), args.step, args.output)}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from harness.artifacts import publish

    target, record = publish(_one_run(args), args.name)
    print(f"published {record['run']} -> {target}")
    print("name it in the configs that use it (jobs/data/<scale>.yaml, jobs/scale/<scale>.yaml):")
    for key, value in record["config_keys"].items():
        print(f"  {key}: {value}")
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from harness.estimate import RESULTS_DIR, estimate

    print(estimate(args.overrides, args.bench_results or RESULTS_DIR))
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from harness.selftest import run

    print(run())
    return 0


# config.job -> the module whose main(run_dir, error_file) runs one task of that job.
JOB_MODULES = {"train": "harness.train.loop", "tokenize": "harness.data.tokenize", "align": "harness.train.align",
               "eval_image": "harness.eval.image_job", "eval_language": "harness.eval.language",
               "train_tokenizer": "harness.train.tokenizer", "train_classifier": "harness.train.classifier"}


def _worker(args: argparse.Namespace) -> int:
    from harness.config import load_run_config
    from harness.rundir import RunDir

    job = load_run_config(RunDir(Path(args.run_dir)).config_path).job
    # Imported only for the job at hand: each pulls in its own heavy dependencies.
    return importlib.import_module(JOB_MODULES[job]).main(args.run_dir, args.error_file)


if __name__ == "__main__":
    raise SystemExit(main())
