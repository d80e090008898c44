"""Language ability, scored by lm-evaluation-harness: the model as an lm_eval LM, task files, the
synthetic world's custom tasks, task names checked at submit, and the smoke-scale forgetting probe
beside the harness's retired scorer."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from harness.data.text_tokenizer import train_bpe
from harness.eval import language
from harness.eval.lm_eval_model import HarnessLM
from harness.model.open_lm import Architecture, OpenLM
from tests.conftest import run_cli

WORDS = ["red", "green", "blue", "apple", "pear", "plum", "the", "is", "colour", "of"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_bpe([" ".join(WORDS)] * 50, vocab_size=300, path=path)


@pytest.fixture(scope="module")
def tiny(tokenizer) -> HarnessLM:
    torch.manual_seed(0)
    model = OpenLM(Architecture(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, vocab_size=tokenizer.get_vocab_size(),
                                positional="rotary", norm_eps=1e-5, init_std=0.02))
    return HarnessLM(model, tokenizer, bos=1, eos=2, pad=0, max_length=24, batch_size=3)


class Favours(torch.nn.Module):
    """A stand-in LM that, by construction, gives the tokens of one word all the probability."""

    def __init__(self, favoured: list[int], vocab: int) -> None:
        super().__init__()
        self.favoured, self.vocab = favoured, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.vocab)
        logits[..., self.favoured] = 20.0
        return logits


def requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def test_lm_eval_picks_the_answer_determined_by_construction(tokenizer, tmp_path):
    favoured = tokenizer.encode(" pear", add_special_tokens=False).ids
    lm = HarnessLM(Favours(favoured, tokenizer.get_vocab_size()), tokenizer, bos=1, eos=2, pad=0, max_length=32)
    rows = [{"context": "the colour of", "choices": ["apple", "pear", "plum"], "answer": 1},
            {"context": "the colour of", "choices": ["pear", "red"], "answer": 0}]
    task = write_task(tmp_path, "choose", rows)
    found = language._run_lm_eval(lm, ["choose"], [task.parent], {}, tmp_path / "hf")
    result = language._task_result(found, "choose")
    assert result["accuracy"] == 1.0 and result["n"] == 2 and result["kind"] == "multiple_choice"
    assert result["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2) and len(result["task_hash"]) == 64


def write_task(directory, name, rows):
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = yaml_task(name, directory / f"{name}.jsonl")
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(task))  # JSON is YAML
    return path


def yaml_task(name, data):
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
            "doc_to_choice": "choices", "doc_to_target": "answer", "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def test_batched_scores_equal_one_at_a_time_and_rolling_windows_sum_to_the_whole(tiny):
    pairs = [([1, 5, 6], [7]), ([1, 5], [6, 7, 8, 9]), ([1], [9, 8])]
    one_by_one = [tiny.score([p])[0] for p in pairs]
    assert [s for s, _ in tiny.score(pairs)] == pytest.approx([s for s, _ in one_by_one], abs=1e-5)
    text = " ".join(WORDS[:6])
    ids = [tiny.bos, *tiny.ids(text)]
    assert len(ids) - 1 <= tiny.max_length
    whole = tiny.score([([tiny.bos], ids[1:])])[0][0]
    assert tiny.loglikelihood_rolling(requests((text,)))[0] == pytest.approx(whole, abs=1e-4)
    tiny.max_length = 3  # windows: every target still predicted, once
    try:
        windowed = tiny.loglikelihood_rolling(requests((text,)))[0]
    finally:
        tiny.max_length = 24
    assert windowed != pytest.approx(whole, abs=1e-6) and windowed < 0


def test_batched_kv_cached_generation_equals_the_plain_greedy_loop(tiny):
    prompts = ["the colour of", "red", "the apple is green and the pear is"]
    got = tiny.generate_until(requests(*[(p, {"until": ["plum"], "max_gen_toks": 6}) for p in prompts]))
    for prompt, answer in zip(prompts, got):
        tokens, out = [tiny.bos, *tiny.ids(prompt)], []
        for _ in range(6):
            with torch.no_grad():
                next_id = int(tiny.model(torch.tensor([tokens]))[0, -1].argmax())
            if next_id == tiny.eos:
                break
            tokens.append(next_id)
            out.append(next_id)
            if "plum" in tiny.text_tokenizer.decode(out):
                break
        assert answer == tiny.text_tokenizer.decode(out).split("plum")[0]


def test_the_synthetic_tasks_are_lm_eval_custom_tasks_over_this_worlds_items(tiny, tmp_path):
    directory = language.write_synthetic_tasks(0, tmp_path / "items")
    facts = [json.loads(line) for line in (tmp_path / "items" / "facts_probe.jsonl").read_text().splitlines()]
    # The items stay with the evaluation; the YAML naming their absolute path does not.
    assert not list((tmp_path / "items").glob("*.yaml"))
    assert str(tmp_path / "items") in (directory / "facts_probe.yaml").read_text()
    assert facts == [{"context": q.context, "choices": list(q.choices), "answer": q.answer} for q in language.facts_probe(0)]
    found = language._run_lm_eval(tiny, list(language.SYNTHETIC_TASKS), [directory], {"facts_probe": 2}, tmp_path / "hf")
    probe, sums = (language._task_result(found, n) for n in language.SYNTHETIC_TASKS)
    assert probe["n"] == 144 and probe["chance"] == 0.25 and sums["kind"] == "generate_until" and sums["n"] == 48
    assert (probe["n_shot"], sums["n_shot"]) == (2, 0)  # eval.language_fewshot, per task


def test_an_unknown_lm_eval_task_exits_2_at_submit_naming_it(tmp_path, data_root):
    result = run_cli("submit", "experiment=eval_language", "run=random_init", "eval.language_tasks=[arc_easy,arc_easyy]",
                     "scale=micro", f"paths.runs_root={tmp_path / 'runs'}", f"paths.data_root={data_root}")
    assert result.returncode == 2 and "'arc_easyy' not an lm-evaluation-harness task" in result.stderr
    assert "arc_easy'," not in result.stderr and not (tmp_path / "runs").exists()


def retired_scorer_accuracy(lm: HarnessLM, items: list[language.Choice]) -> float:
    """The harness's own scorer before lm_eval (commit 3828288), kept here to show both once: the
    choice with the highest summed log-probability of its tokens after `<bos> context`, one
    unpadded sequence at a time."""
    right = 0
    for item in items:
        scores = []
        for choice in item.choices:
            context, continuation = [lm.bos, *lm.ids(item.context)], lm.ids(" " + choice)
            tokens = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = F.log_softmax(lm.model(tokens[:, :-1]).float(), -1)[0]
            scores.append(float(logprobs[len(context) - 1:].gather(1, tokens[0, len(context):, None]).sum()))
        right += max(range(len(scores)), key=scores.__getitem__) == item.answer
    return right / len(items)


def test_the_smoke_lm_knows_its_facts_and_the_change_after_t2i_training_is_reported(tmp_path, smoke_data_root):
    paths = [f"paths.runs_root={tmp_path / 'runs'}", f"paths.data_root={smoke_data_root}"]
    trained = run_cli("submit", "experiment=pretrained", "scale=smoke", "train.steps=40", *paths)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    (lm,) = (tmp_path / "runs" / "pretrain_text").iterdir()
    (t2i,) = (tmp_path / "runs" / "pretrained").iterdir()
    results = {}
    for name, run in (("before", lm), ("after", t2i)):
        evaluated = run_cli("submit", "experiment=eval_language", "scale=smoke", f"run={run.parent.name}/{run.name}", *paths)
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        (result_file,) = (run / "eval").glob("language@*.json")
        results[name] = json.loads(result_file.read_text())
    before = results["before"]["tasks"]["facts_probe"]
    assert before["accuracy"] >= before["chance"] + 0.15, before  # stated margin: 15 points over 25% chance
    assert results["before"]["scorer"].startswith("lm-evaluation-harness 0.4.13") and before["n_shot"] == 0
    after = results["after"]["tasks"]["facts_probe"]
    assert 0 <= after["accuracy"] <= 1 and after["n"] == before["n"]  # reported, whatever it is
    # lm_eval and the retired scorer, side by side on the same model and items: within one item.
    from harness.data.dataset import open_dataset
    from harness.eval.target import load_model, trained_config
    from harness.rundir import RunDir

    config = trained_config(RunDir(lm))
    dataset = open_dataset(config.data, smoke_data_root)
    model, _ = load_model(RunDir(lm), 0, torch.device("cpu"))
    retired = retired_scorer_accuracy(language._harness_lm(model, dataset, config, 16), language.facts_probe(config.data.seed))
    print(f"facts probe of the smoke LM: lm_eval {before['accuracy']:.4f}, retired scorer {retired:.4f}")
    assert abs(before["accuracy"] - retired) <= 1 / before["n"] + 1e-9
    assert results["after"]["perplexity"]["captions"]["perplexity"] > 0
    # Captions scored as each model was trained: <boi> ends them for the text-to-image model, <eos>
    # for the text LM; one terminator per caption either way.
    before_ppl, after_ppl = results["before"]["perplexity"]["captions"], results["after"]["perplexity"]["captions"]
    assert (before_ppl["terminator"], after_ppl["terminator"]) == ("<eos>", "<boi>")
    assert before_ppl["targets"] == after_ppl["targets"]
    assert len(results["before"]["prompts"]) >= 1
