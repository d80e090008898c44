"""Language ability: the scorer, local task files, and the smoke-scale forgetting probe."""

import json

import pytest
import torch
from tokenizers import Tokenizer

from harness.data.text_tokenizer import train_bpe
from harness.errors import HarnessError
from harness.eval.language import Choice, Completion, Scorer, load_task_file, score_task
from harness.model.open_lm import Architecture, OpenLM
from tests.conftest import run_cli

WORDS = ["red", "green", "blue", "apple", "pear", "plum", "the", "is", "colour", "of"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_bpe([" ".join(WORDS)] * 50, vocab_size=300, path=path)


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


def test_the_scorer_picks_the_answer_determined_by_construction(tokenizer):
    favoured = tokenizer.encode(" pear", add_special_tokens=False).ids
    scorer = Scorer(Favours(favoured, tokenizer.get_vocab_size()), tokenizer, bos=1, eos=2)
    question = Choice("the colour of", ("apple", "pear", "plum"), answer=1)
    assert scorer.choose(question) == (1, 1)
    result = score_task(scorer, [question, Choice("the colour of", ("pear", "red"), answer=0)])
    assert result["accuracy"] == 1.0 and result["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_a_local_task_file_runs_on_a_tiny_model(tokenizer, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"context": "the colour of", "choices": ["red", "pear"], "answer": 0}) + "\n"
                     + json.dumps({"context": "the colour of the apple is", "target": "red"}) + "\n")
    items = load_task_file(tasks)
    assert isinstance(items[0], Choice) and isinstance(items[1], Completion)
    torch.manual_seed(0)
    model = OpenLM(Architecture(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, vocab_size=tokenizer.get_vocab_size(),
                                positional="rotary", norm_eps=1e-5, init_std=0.02))
    scorer = Scorer(model, tokenizer, bos=1, eos=2)
    assert score_task(scorer, items[:1])["n"] == 1 and score_task(scorer, items[1:])["kind"] == "completion"
    (tmp_path / "bad.jsonl").write_text('{"context": "x"}\n')
    with pytest.raises(HarnessError, match="bad.jsonl:1"):
        load_task_file(tmp_path / "bad.jsonl")


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
    after = results["after"]["tasks"]["facts_probe"]
    assert 0 <= after["accuracy"] <= 1 and after["n"] == before["n"]  # reported, whatever it is
    assert results["after"]["perplexity"]["captions"]["perplexity"] > 0
    # Captions scored as each model was trained: <boi> ends them for the text-to-image model, <eos>
    # for the text LM; one terminator per caption either way.
    before_ppl, after_ppl = results["before"]["perplexity"]["captions"], results["after"]["perplexity"]["captions"]
    assert (before_ppl["terminator"], after_ppl["terminator"]) == ("<eos>", "<boi>")
    assert before_ppl["targets"] == after_ppl["targets"]
    assert len(results["before"]["prompts"]) >= 1
