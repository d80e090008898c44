"""Language ability of a run's model (`experiment=eval_language run=... step=...`): does
image-caption training make a pre-trained LM forget language?

Scored by this module's own log-likelihood scorer (not lm-evaluation-harness, not LLM-Foundry:
open_lm's published scores came from LLM-Foundry and are not directly comparable):
  - multiple choice: the choice whose tokens have the highest summed log-probability after the
    context (also reported length-normalised, per token);
  - completion: greedy decoding must begin with the target.
Tasks come from local JSONL files (`eval.language_tasks`: {"context", "choices", "answer"} or
{"context", "target"} per line; ARC, HellaSwag, PIQA, ... converted to it) and, at small scales,
from the synthetic world the smoke LM learned: fact questions and few-shot sums.
Also recorded: greedy answers to qualitative prompts, and perplexity on held-out captions and on
held-out non-caption text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.config.schema import RunConfig
from harness.data import synthetic, text_tokenizer
from harness.data.dataset import STORED_AS, Dataset, open_dataset
from harness.data.tokenize import data_path
from harness.errors import HarnessError, run_job
from harness.eval.losses import held_out_losses
from harness.eval.target import load_model, trained_config
from harness.rundir import RunDir

SCORER = "harness.eval.language: summed log-likelihood (multiple choice), greedy prefix match (completion)"


@dataclass(frozen=True)
class Choice:
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Completion:
    context: str
    target: str


class Scorer:
    """A model and a tokenizer; text only (a text-to-image model scores with its whole vocabulary,
    so probability it moved to image codes counts against it)."""

    def __init__(self, model: torch.nn.Module, tokenizer, bos: int, eos: int) -> None:
        self.model, self.tokenizer, self.bos, self.eos = model.eval(), tokenizer, bos, eos
        self.device = next(model.parameters()).device

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @torch.no_grad()
    def log_likelihood(self, context: str, continuation: str) -> tuple[float, int]:
        """Summed log-probability of the continuation's tokens after <bos> context; and their count."""
        context_ids, continuation_ids = [self.bos, *self.ids(context)], self.ids(" " + continuation)
        tokens = torch.tensor([context_ids + continuation_ids], device=self.device)
        logprobs = F.log_softmax(self.model(tokens[:, :-1]).float(), -1)[0]
        targets = tokens[0, len(context_ids):]
        picked = logprobs[len(context_ids) - 1:].gather(1, targets[:, None])
        return float(picked.sum()), len(continuation_ids)

    def choose(self, question: Choice) -> tuple[int, int]:
        """(argmax by summed log-likelihood, argmax by per-token log-likelihood)."""
        scored = [self.log_likelihood(question.context, choice) for choice in question.choices]
        total = max(range(len(scored)), key=lambda i: scored[i][0])
        per_token = max(range(len(scored)), key=lambda i: scored[i][0] / scored[i][1])
        return total, per_token

    @torch.no_grad()
    def greedy(self, prompt: str, max_tokens: int = 16) -> str:
        tokens = [self.bos, *self.ids(prompt)]
        generated: list[int] = []
        for _ in range(max_tokens):
            logits = self.model(torch.tensor([tokens], device=self.device))[0, -1]
            next_id = int(logits.argmax())
            if next_id == self.eos:
                break
            tokens.append(next_id)
            generated.append(next_id)
        return self.tokenizer.decode(generated)


def score_task(scorer: Scorer, items: list[Choice | Completion]) -> dict:
    if all(isinstance(item, Choice) for item in items):
        picks = [scorer.choose(item) for item in items]
        return {"kind": "multiple_choice", "n": len(items),
                "accuracy": sum(p[0] == item.answer for p, item in zip(picks, items)) / len(items),
                "accuracy_per_token": sum(p[1] == item.answer for p, item in zip(picks, items)) / len(items),
                "chance": sum(1 / len(item.choices) for item in items) / len(items)}
    answers = [scorer.greedy(item.context) for item in items]
    return {"kind": "completion", "n": len(items),
            "accuracy": sum(a.strip().startswith(item.target.strip()) for a, item in zip(answers, items)) / len(items),
            "examples": [{"context": i.context, "target": i.target, "answer": a} for i, a in zip(items[:3], answers)]}


# --- tasks -------------------------------------------------------------------------------------

def load_task_file(path: Path) -> list[Choice | Completion]:
    """A local task file: JSONL, one {"context", "choices", "answer"} or {"context", "target"} per line."""
    if not path.is_file():
        raise HarnessError(f"language task file {path} not found (eval.language_tasks)")
    items: list[Choice | Completion] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(Choice(row["context"], tuple(row["choices"]), int(row["answer"])) if "choices" in row
                         else Completion(row["context"], row["target"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"{path}:{number}: not a task line ({type(exc).__name__}: {exc})") from None
    return items


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

def evaluate_language(config: RunConfig, log=print) -> dict:
    settings, data_root = config.eval, Path(config.paths.data_root)
    target = RunDir(Path(config.paths.runs_root) / settings.run)
    trained = trained_config(target)
    dataset = open_dataset(trained.data, data_root)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, step = load_model(target, settings.step, device)
    tokenizer = text_tokenizer.load(dataset.root / dataset.manifest["text_tokenizer"]["file"])
    specials = dataset.manifest["text_tokenizer"]["specials"]
    scorer = Scorer(model, tokenizer, specials["bos"], specials["eos"])
    tasks = _tasks(config, trained, data_root)
    result = {"run": target.name, "step": step, "scorer": SCORER, "tasks": {}, "prompts": [],
              "perplexity": _perplexities(model, dataset, trained, settings.batch_size)}
    for name, items in tasks.items():
        result["tasks"][name] = score_task(scorer, items)
        log(f"{name}: accuracy {result['tasks'][name]['accuracy']:.3f} over {len(items)}")
    for prompt in settings.prompts:
        result["prompts"].append({"prompt": prompt, "answer": scorer.greedy(prompt, max_tokens=12)})
    out = target.path / "eval" / f"language@{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"-> {out}")
    return result


def _tasks(config: RunConfig, trained: RunConfig, data_root: Path) -> dict[str, list]:
    tasks: dict[str, list] = {}
    if trained.data.kind == "synthetic":
        tasks["facts_probe"] = facts_probe(trained.data.seed)
        tasks["few_shot_sums"] = few_shot_sums(trained.data.seed)
    for path in config.eval.language_tasks:
        tasks[Path(path).stem] = load_task_file(data_path(path, data_root))
    return tasks


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
        result = evaluate_language(config, log=lambda msg: print(msg, flush=True))
        (Path(run_dir) / "result.json").write_text(json.dumps(result, indent=1) + "\n")

    return run_job(work, error_file, "eval_language")
