"""Language ability of a run's model (`experiment=eval_language run=... step=...`): does
image-caption training make a pre-trained LM forget language?

Scored by lm-evaluation-harness (pinned in pyproject.toml), the model wrapped as an lm_eval LM
(lm_eval_model.py): tasks by lm_eval name (`eval.language_tasks`: arc_easy, hellaswag, piqa, ...,
their datasets read offline from the HF datasets cache under `paths.hf_home`) or lm_eval task YAML
files. At small scales the synthetic world the smoke LM read about adds its own tasks, as lm_eval
custom tasks (harness/eval/lm_eval_tasks/*.yaml) over JSONL items written into the evaluation's
run directory: fact questions (multiple choice) and few-shot sums (greedy completion).
Also recorded: greedy answers to qualitative prompts, and perplexity on held-out captions and on
held-out non-caption text.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from harness.config.schema import RunConfig
from harness.data import synthetic, text_tokenizer
from harness.data.dataset import STORED_AS, Dataset, open_dataset
from harness.data.tokenize import data_path
from harness.errors import HarnessError, run_job
from harness.eval.losses import held_out_losses
from harness.eval.target import load_model, trained_config
from harness.rundir import RunDir
from harness.tracking import log_evaluation

TASK_TEMPLATES = Path(__file__).parent / "lm_eval_tasks"
# The synthetic world's own tasks (at small scales): their names, and the items each is made of.
SYNTHETIC_TASKS = ("facts_probe", "few_shot_sums")
# Where lm_eval's datasets are read from, offline (unless the environment sets HF_DATASETS_CACHE and
# HF_HUB_CACHE): inside the data root, so `dvc pull` restores them with the shards.
HF_HOME = "hf"


def scorer_name() -> str:
    from importlib.metadata import version

    return f"lm-evaluation-harness {version('lm_eval')} (harness.eval.lm_eval_model)"


@dataclass(frozen=True)
class Choice:
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Completion:
    context: str
    target: str


# --- tasks -------------------------------------------------------------------------------------

def facts_probe(seed: int, choices: int = 4) -> list[Choice]:
    """Questions about the synthetic world the smoke LM read about: capital, food, national
    animal of every invented country, each with `choices` options (the right one among others)."""
    countries = synthetic.invented_countries(seed)
    rng = random.Random(f"{seed}/facts-probe")
    questions = []
    for country in countries:
        for context, answer, pool in (
                (f"the capital of {country.name} is", country.capital, [c.capital for c in countries]),
                (f"people in {country.name} mostly eat", country.food, list(synthetic.FOODS)),
                (f"the national animal of {country.name} is the", country.animal, list(synthetic.ANIMALS))):
            options = rng.sample([p for p in dict.fromkeys(pool) if p != answer], choices - 1) + [answer]
            rng.shuffle(options)
            questions.append(Choice(context, tuple(options), options.index(answer)))
    return questions


def few_shot_sums(seed: int, count: int = 48, shots: int = 3) -> list[Completion]:
    """In-context pattern: `a plus b is c .` shown `shots` times, then a new sum to complete."""
    rng = random.Random(f"{seed}/few-shot-sums")
    items = []
    for _ in range(count):
        pairs = [(rng.randrange(0, 50), rng.randrange(0, 50)) for _ in range(shots + 1)]
        shown = " ".join(f"{a} plus {b} is {a + b} ." for a, b in pairs[:-1])
        a, b = pairs[-1]
        items.append(Completion(f"{shown} {a} plus {b} is", str(a + b)))
    return items


# --- the job -----------------------------------------------------------------------------------

def evaluate_language(config: RunConfig, workdir: Path, log=print) -> dict:
    """Score the run's model on every task; write eval/language@<step>.json into the run."""
    settings, data_root = config.eval, Path(config.paths.data_root)
    target = RunDir(Path(config.paths.runs_root) / settings.run)
    trained = trained_config(target)
    dataset = open_dataset(trained.data, data_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, step = load_model(target, settings.step, device)
    lm = _harness_lm(model, dataset, trained, settings.batch_size)
    names, include = task_specs(config, trained, workdir)
    found = _run_lm_eval(lm, names, include, dict(settings.language_fewshot), data_root / HF_HOME)
    result = {"run": target.name, "step": step, "scorer": scorer_name(), "tasks": {}, "prompts": [],
              "lm_eval": {k: found.get(k) for k in ("n-shot", "versions", "lm_eval_version", "config")},
              "perplexity": _perplexities(model, dataset, trained, settings.batch_size)}
    for name in names:
        result["tasks"][name] = _task_result(found, name)
        log(f"{name}: accuracy {result['tasks'][name]['accuracy']:.3f} over {result['tasks'][name]['n']}")
    answers = lm.greedy(list(settings.prompts), [{"max_gen_toks": 12}] * len(settings.prompts)) if settings.prompts else []
    result["prompts"] = [{"prompt": p, "answer": a} for p, a in zip(settings.prompts, answers)]
    out = target.path / "eval" / f"language@{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log(f"-> {out}")
    log_evaluation(config, target, step, {
        **{f"{name}_accuracy": found["accuracy"] for name, found in result["tasks"].items()},
        **{f"ppl_{name}": found.get("perplexity") for name, found in result["perplexity"].items()}})
    return result


def _harness_lm(model, dataset: Dataset, trained: RunConfig, batch_size: int):
    from harness.eval.lm_eval_model import HarnessLM

    tokenizer = text_tokenizer.load(dataset.root / dataset.manifest["text_tokenizer"]["file"])
    specials = dataset.manifest["text_tokenizer"]["specials"]
    return HarnessLM(model, tokenizer, specials["bos"], specials["eos"], specials["pad"], trained.data.seq_len,
                     batch_size)


def task_specs(config: RunConfig, trained: RunConfig, workdir: Path) -> tuple[list[str], list[Path]]:
    """The task names lm_eval runs and the folders of YAML task files it reads them from: the
    synthetic world's tasks (written into `workdir`), then `eval.language_tasks` (names, or YAML
    files relative to paths.data_root)."""
    names, include = [], []
    if trained.data.kind == "synthetic":
        include.append(write_synthetic_tasks(trained.data.seed, workdir / "lm_eval_tasks"))
        names += list(SYNTHETIC_TASKS)
    for task in config.eval.language_tasks:
        if task.endswith((".yaml", ".yml")):
            path = data_path(task, Path(config.paths.data_root))
            if not path.is_file():
                raise HarnessError(f"eval.language_tasks: task file {path} not found")
            include.append(path.parent)
            names.append(yaml.safe_load(path.read_text())["task"])
        else:
            names.append(task)
    return names, include


def write_synthetic_tasks(seed: int, directory: Path) -> Path:
    """facts_probe and few_shot_sums as lm_eval custom tasks: this world's items as JSONL in
    `directory` (kept with the evaluation), and each shipped YAML, its data file set to them, in a
    private temporary directory (returned). lm_eval reads a relative data file from its working
    directory, so the YAML holds an absolute path: it must not lie in the run directory, whose
    committed files hold no path of this machine (harness/portable_paths.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    tasks = Path(tempfile.mkdtemp(prefix="lm-eval-tasks-"))
    for name, items in (("facts_probe", facts_probe(seed)), ("few_shot_sums", few_shot_sums(seed))):
        data = directory / f"{name}.jsonl"
        data.write_text("".join(json.dumps(asdict(item)) + "\n" for item in items))
        task = yaml.safe_load((TASK_TEMPLATES / f"{name}.yaml").read_text())
        task["dataset_kwargs"]["data_files"] = {"test": str(data.resolve())}
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return tasks


def check_task_names(config: RunConfig) -> None:
    """Every `eval.language_tasks` name must be an lm_eval task: refused at submit, naming it."""
    named = [t for t in config.eval.language_tasks if not t.endswith((".yaml", ".yml")) and t not in SYNTHETIC_TASKS]
    unknown = [t for t in named if t not in _known_tasks()]
    if unknown:
        raise HarnessError(f"eval.language_tasks: {', '.join(map(repr, unknown))} not an lm-evaluation-harness "
                           f"task ({scorer_name()}; `lm-eval ls tasks` lists them), nor a task YAML file")


@functools.cache
def _known_tasks() -> frozenset[str]:
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)  # indexes lm_eval's own task files: seconds, once


def _run_lm_eval(lm, names: list[str], include: list[Path], fewshot: dict[str, int], hf_home: Path) -> dict:
    """lm_eval on these tasks, offline, leaving the process's random generators as they were."""
    # lm_eval's own tasks read the datasets cache DVC versions with the data (an image's own HF_HOME
    # is for other caches); the synthetic tasks' JSON alone needs no shared cache (a private one).
    only_synthetic = not set(names) - set(SYNTHETIC_TASKS)
    cache = Path(tempfile.mkdtemp(prefix="hf-datasets-")) if only_synthetic else hf_home / "datasets"
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache))
    os.environ.setdefault("HF_HUB_CACHE", str(hf_home / "hub"))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import datasets
    import lm_eval.api.task
    from lm_eval import evaluator

    # A job's log stays line-based: lm_eval's per-task bar has no switch of its own.
    datasets.disable_progress_bars()
    lm_eval.api.task.tqdm = functools.partial(lm_eval.api.task.tqdm, disable=not sys.stderr.isatty())
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include] or None
    manager = TaskManager(include_path=paths, include_defaults=False)
    if set(names) - set(manager.all_tasks):  # lm_eval's own tasks: index its task files (seconds)
        manager = TaskManager(include_path=paths)
    try:
        tasks = manager.load(names)
    except KeyError as exc:
        raise HarnessError(f"lm_eval: {exc.args[0]}") from None
    for name, task in tasks["tasks"].items():
        if name in fewshot:
            task.set_config(key="num_fewshot", value=fewshot[name])
        task.set_fewshot_seed(seed=1234)
    found = evaluator.evaluate(lm=lm, task_dict=tasks, bootstrap_iters=0, log_samples=True)
    from lm_eval.utils import hash_string

    samples = found.pop("samples", {})
    # lm_eval's own task hash (what its EvaluationTracker records): documents, prompts and targets.
    found["task_hashes"] = {name: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"]
                                                      for s in rows)) for name, rows in samples.items()}
    # A multiple-choice task's chance level: the mean of 1 / its documents' number of choices.
    found["chance"] = {name: sum(1 / len(s["arguments"]) for s in rows) / len(rows) for name, rows in samples.items()
                       if found["configs"].get(name, {}).get("output_type") == "multiple_choice" and rows}
    found["lm_eval_version"] = scorer_name()
    return found


def _task_result(found: dict, name: str) -> dict[str, Any]:
    """A task's lm_eval numbers, with `accuracy` its headline metric (acc, else exact_match)."""
    metrics = {k: v for k, v in found["results"].get(name, {}).items() if not k.endswith("_stderr,none")}
    headline = next((v for k, v in metrics.items() if k.split(",")[0] in ("acc", "exact_match")), None)
    if headline is None:
        raise HarnessError(f"lm_eval task {name} reported no acc or exact_match: {sorted(metrics)}")
    config = found["configs"].get(name, {})
    return {"kind": config.get("output_type"), "n": found["n-samples"][name]["effective"],
            "accuracy": float(headline), "metrics": {k: v for k, v in metrics.items() if k not in ("name", "alias")},
            "n_shot": found["n-shot"].get(name), "version": found["versions"].get(name),
            "task_hash": found["task_hashes"].get(name),
            **({"chance": found["chance"][name]} if name in found.get("chance", {}) else {})}


def _perplexities(model, dataset: Dataset, trained: RunConfig, batch_size: int) -> dict:
    """Held-out perplexity on captions and on non-caption text, each scored as the model was
    trained: a text-to-image model learned `<bos> caption <boi>` (it never put <eos> after a
    caption), a text LM `<bos> caption <eos>`. The terminator is recorded; it is one target per
    caption either way, each model's own end of a caption, so the numbers stay comparable."""
    found = {}
    as_trained = "captions" if trained.data.corpus == "captions" else "caption_text"
    for corpus, label in ((as_trained, "captions"), ("text", "text")):
        stored = STORED_AS[corpus]
        if "val" not in dataset.manifest["corpora"].get(stored, {}):
            found[label] = {"note": f"no held-out {stored} in dataset '{dataset.manifest['name']}'"}
            continue
        losses = held_out_losses(model, dataset, corpus, trained.data.seq_len, batch_size)
        found[label] = {"loss": losses["loss_text"], "perplexity": losses["ppl_text"],
                        "targets": losses["targets_text"], "terminator": "<boi>" if corpus == "captions" else "<eos>"}
    return found


def main(run_dir: str, error_file: str | None = None) -> int:
    from harness.config import load_run_config

    config = load_run_config(RunDir(Path(run_dir)).config_path)

    def work() -> None:
        result = evaluate_language(config, Path(run_dir), log=lambda msg: print(msg, flush=True))
        (Path(run_dir) / "result.json").write_text(json.dumps(result, indent=1, default=float) + "\n")

    return run_job(work, error_file, "eval_language")
