"""`harness collect`: read run directories (and nothing else) and render RESULTS.md.

Only complete runs enter the results table; incomplete or failed runs are listed apart.
The output depends only on the run directories, so the same runs give the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from harness.rundir import RunDir, RunState, find_runs
from harness.train.metrics import read_metrics

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class RunRow:
    name: str
    experiment: str
    run_id: str
    state: str
    scale: str
    init: str
    seed: int
    steps: int | None
    tokens: int | None
    loss_text: float | None
    loss_image: float | None
    data_hash: str | None
    path: str


def read_row(run: RunDir, relative_to: Path) -> RunRow:
    config = yaml.safe_load(run.config_path.read_text())
    metrics = read_metrics(run.metrics_path)
    final = metrics[-1] if metrics else {}
    init = config["init"]["strategy"] + (f" ({config['init']['source']})" if config["init"].get("source") else "")
    data = run.provenance().get("data", {})
    return RunRow(
        name=run.name, experiment=run.experiment, run_id=run.run_id, state=run.state().value,
        scale=config["scale"], init=init, seed=config["seed"], steps=final.get("step"),
        tokens=final.get("tokens"), loss_text=final.get("loss_text"), loss_image=final.get("loss_image"),
        data_hash=(data.get("hash") or "")[:12] or None, path=_relative(run.path, relative_to),
    )


def render(runs_root: Path, output: Path) -> str:
    rows = [read_row(run, output.parent) for run in find_runs(runs_root)]
    rows.sort(key=lambda r: (r.experiment, r.scale, r.seed, r.run_id))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, digits=4: "-" if v is None else f"{v:.{digits}f}"
    env.filters["count"] = lambda v: "-" if v is None else f"{v:,}"
    text = env.get_template("RESULTS.md.j2").render(
        complete=[r for r in rows if r.state == RunState.DONE.value],
        incomplete=[r for r in rows if r.state != RunState.DONE.value],
    )
    output.write_text(text)
    return text


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
