"""`harness reproduce`: every experiment of the paper, in dependency order, then `harness collect`.

Training first (at the small scales, the synthetic world's image tokenizer and shapes classifier;
then the alignment's shuffled-caption control, then every arm with `seeds` seeds; the
pre-trained LM and the alignment come first as their upstreams), then the evaluations that read the trained runs: image evaluation of
every image-generating run, language evaluation of the pre-trained LM before image-caption
training, of the pre-trained runs at every kept checkpoint (the forgetting curve), of the random
runs and of the caption-only LMs. Locally each submit waits; on Slurm the trainings of a stage
are waited for before the evaluations that need their kept checkpoints are submitted.

`--beyond` runs the questions beyond the paper instead (beyond_stages), with the evaluations
their hypotheses read.

A failed stage is reported and the rest still runs; submitting again resumes (done runs are
skipped, failed ones get a new attempt). The collector lists failed runs apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from harness.config import compose_runs, load_run_config
from harness.config.compose import scale_defaults
from harness.data.dataset import WITH_IMAGES
from harness.errors import HarnessError
from harness.results import arms
from harness.rundir import RunDir, find_runs
from harness.status import wait_for
from harness.train import checkpoints

# Arms trained with every seed, and the caption-only LM sizes per scale (paper: the
# caption_lm_sizes group; small scales sweep the small architectures).
ARMS = tuple(",".join(group) for group in (arms.INITS, arms.FREEZING, arms.UNCONDITIONAL))
CAPTION_LM_SIZES = {"paper": "open_lm_tiny,open_lm_79m,open_lm_160m,open_lm_411m,open_lm_1b"}
SMALL_CAPTION_LM_SIZES = "micro,smoke"
# Runs whose language ability is measured, and whether at every kept checkpoint or only at the end.
LANGUAGE_AT_KEPT_STEPS = ("pretrained",)
LANGUAGE_AT_END = ("pretrain_text", "random_init", "caption_lm")
# Runs whose untrained model (step 0) is also evaluated: the reference FD and compliance must
# clearly separate a trained model from.
UNTRAINED_REFERENCE = ("random_init",)


def training_stages(scale: str, seeds: int, synthetic: bool = False) -> list[list[str]]:
    seed = f"seed={','.join(str(s) for s in range(seeds))}"
    sizes = CAPTION_LM_SIZES.get(scale, SMALL_CAPTION_LM_SIZES)
    # The synthetic world's own artifacts first: its image tokenizer and shapes classifier. The
    # datasets and FD use their published copies (harness/artifacts/, named with their hashes);
    # RESULTS.md says whether these runs reproduced them bit for bit.
    world = [["experiment=train_tokenizer"], ["experiment=train_classifier"]] if synthetic else []
    # One random_init trained 16x longer (seed 0): the run whose images show the metrics see content.
    long_run = [["experiment=random_init_long"]] if synthetic else []
    # The pre-trained LM and the alignment are not stages of their own: they are submitted as the
    # upstreams of the runs that start from them, resolved exactly as those runs resolve them.
    return [*world, ["experiment=align", "align.shuffle_captions=true"],
            *[[f"experiment={group}", seed] for group in ARMS],
            ["experiment=caption_lm", f"model={sizes}", seed], *long_run]


def beyond_stages(scale: str, seeds: int) -> list[list[str]]:
    """The questions beyond the paper (jobs/group/): each group sweeps its knob from the neutral
    value, so the paper's own arms it compares against are part of it (done runs are skipped)."""
    seed = f"seed={','.join(str(s) for s in range(seeds))}"
    sizes = ",".join([scale_defaults(scale)["model"], *arms.OTHER_LM_SIZES[scale]])
    datasets = ",".join([scale_defaults(scale)["data"], arms.OTHER_TOKENIZER_DATA[scale]])
    return [["experiment=text_loss_weighting", seed], ["experiment=text_mixing", seed],
            ["experiment=lm_sizes", f"model={sizes}", seed], ["experiment=tokenizers", f"data={datasets}", seed]]


def reproduce(overrides: list[str], seeds: int = 3, output: Path = Path("RESULTS.md"),
              out: TextIO = sys.stdout, beyond: bool = False) -> int:
    """Returns the number of stages that failed."""
    from harness.results.collect import render
    from harness.submit import submit

    config = compose_runs([*overrides, "experiment=random_init"])[0].config
    failures: list[str] = []
    trained: dict[Path, RunDir] = {}
    stages = (beyond_stages(config.scale, seeds) if beyond
              else training_stages(config.scale, seeds, synthetic=config.data.kind == "synthetic"))
    for stage in stages:
        for run in _submit_stage(submit, [*stage, *overrides], out, failures):
            trained.setdefault(run.path, run)
    if config.launch.executor != "local":
        wait_for(list(trained.values()), out)
    for stage in evaluation_stages(list(trained.values()), beyond=beyond):
        _submit_stage(submit, [*stage, *overrides], out, failures)
    runs_root = Path(config.paths.runs_root)
    if config.launch.executor != "local":
        wait_for(list(find_runs(runs_root)), out)
    render(runs_root, output)
    print(f"wrote {output} from {runs_root}", file=out)
    for failure in failures:
        print(f"failed: {failure}", file=out)
    return len(failures)


def evaluation_stages(runs: list[RunDir], beyond: bool = False) -> list[list[str]]:
    """The evaluations of trained runs. Beyond the paper, the hypotheses read held-out losses (written
    by training) and the facts probe of the pre-trained runs that keep more text: only those
    language evaluations run."""
    stages = []
    for run in sorted(runs, key=lambda r: r.name):
        if not run.config_path.exists():
            continue
        config = load_run_config(run.config_path)
        if config.job != "train":
            continue
        if beyond:
            if config.experiment in LANGUAGE_AT_KEPT_STEPS and _keeps_more_text(config):
                stages += [["experiment=eval_language", f"run={run.name}", f"step={step}"] for step in kept_steps(run)]
                stages.append(["experiment=eval_language", f"run={run.name}"])
            continue
        if config.data.corpus in WITH_IMAGES:
            stages.append(["experiment=eval_image", f"run={run.name}"])
            if config.experiment in UNTRAINED_REFERENCE and config.data.kind == "synthetic":
                stages.append(["experiment=eval_image", f"run={run.name}", "eval.untrained=true"])
        if config.experiment in LANGUAGE_AT_KEPT_STEPS:
            stages += [["experiment=eval_language", f"run={run.name}", f"step={step}"] for step in kept_steps(run)]
        if config.experiment in LANGUAGE_AT_KEPT_STEPS + LANGUAGE_AT_END:
            stages.append(["experiment=eval_language", f"run={run.name}"])
    return stages


def _keeps_more_text(config) -> bool:
    """A run of the text-weighting or text-mixing questions: the only ones whose hypotheses read
    language (the neutral runs they compare with are the paper's own, evaluated by its reproduction)."""
    return config.train.text_loss_weight != 1 or config.data.text_mix > 0


def kept_steps(run: RunDir) -> list[int]:
    """Steps of the checkpoints kept at `train.keep_at_tokens` (never pruned), the final one aside."""
    steps = []
    for path in checkpoints.complete(run.checkpoints):
        client = json.loads((path / checkpoints.CLIENT).read_text())
        if client.get("keep"):
            steps.append(int(client["step"]))
    return steps


def _submit_stage(submit, overrides: list[str], out: TextIO, failures: list[str]) -> list[RunDir]:
    print(f"== harness submit {' '.join(overrides)}", file=out, flush=True)
    try:
        return submit(overrides, out=out)
    except HarnessError as exc:
        print(f"stage failed: {exc}", file=out, flush=True)
        failures.append(f"{' '.join(overrides)}: {exc}")
        return []

