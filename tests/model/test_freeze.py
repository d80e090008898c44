import json

import pytest
import torch

from harness.data.vocab import VocabLayout
from harness.model.freeze import FreezeError, apply_freeze, check_parts, plan_freeze
from harness.model.open_lm import Architecture, OpenLM
from harness.train import model_file
from tests.conftest import micro_args, run_cli

LAYOUT = VocabLayout(text_size=20, pad=0, bos=1, eos=2, codebook_size=8)


def small_model() -> OpenLM:
    torch.manual_seed(0)
    return OpenLM(Architecture(d_model=16, n_layers=3, n_heads=2, ffn_hidden=32, vocab_size=LAYOUT.size,
                               positional="rotary", norm_eps=1e-5, init_std=0.2))


def train_a_few_steps(model: OpenLM, plan) -> None:
    """AdamW with weight decay on every trainable tensor, as the trainer builds it."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not plan.no_decay(n)], "weight_decay": 0.1},
              {"params": [p for n, p in params if plan.no_decay(n)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2)
    for _ in range(3):
        tokens = torch.randint(0, LAYOUT.size, (4, 9))
        torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()


def frozen_elements(part: str, name: str, tensor: torch.Tensor, text_size: int = LAYOUT.text_size) -> torch.Tensor:
    """Which elements of a tensor the part freezes, written out independently of the module."""
    mask = torch.zeros_like(tensor, dtype=torch.bool)
    if part == "embeddings" and name in ("tok_embeddings.weight", "output.weight"):
        mask[:text_size] = True
    elif part == "layernorm" and "norm" in name:
        mask[:] = True
    elif part == "attention" and ("in_proj" in name or "out_proj" in name):
        mask[:] = True
    elif part == "ffn" and ("w12" in name or "w3" in name):
        mask[:] = True
    elif part == "layers:1-2" and name.startswith(("layers.1.", "layers.2.")):
        mask[:] = True
    return mask


@pytest.mark.parametrize("part", ["embeddings", "layernorm", "attention", "ffn", "layers:1-2"])
def test_frozen_elements_stay_bitwise_and_the_rest_trains(part):
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = plan_freeze(model, [part], LAYOUT)
    apply_freeze(model, plan)
    train_a_few_steps(model, plan)
    expected_trainable = 0
    for name, param in model.named_parameters():
        frozen = frozen_elements(part, name, param)
        assert torch.equal(param[frozen], before[name][frozen]), name
        assert not torch.equal(param[~frozen], before[name][~frozen]) or not (~frozen).any(), name
        expected_trainable += int((~frozen).sum())
    assert plan.trainable_count(model) == expected_trainable


@pytest.mark.parametrize("parts, message", [(["emb"], "unknown part 'emb'"),
                                            (["layers:2-5"], "within 0-2"), (["layers:x"], "unknown part")])
def test_bad_parts_are_named(parts, message):
    with pytest.raises(FreezeError, match=message):
        check_parts(parts, n_layers=3)


def test_a_frozen_run_logs_its_trainable_count_and_keeps_frozen_tensors(runs_root, data_root):
    result = run_cli("submit", "experiment=random_init",
                     *micro_args(runs_root, data_root, "freeze=[embeddings,layernorm,layers:0-0]", "train.steps=4"))
    assert result.returncode == 0, result.stderr
    (run_dir,) = (runs_root / "random_init").iterdir()
    summary = json.loads((run_dir / "model.json").read_text())
    final = model_file.load_model_file(run_dir / "checkpoints" / "final")
    arch, layout = Architecture(**final["architecture"]), VocabLayout(**final["layout"])
    torch.manual_seed(0)  # the run's seed: its step-0 weights
    initial = OpenLM(arch).state_dict()
    assert set(final["state_dict"]) == set(initial)  # frozen tensors are in the model file too
    trainable = 0
    for name, tensor in final["state_dict"].items():
        if "inv_freq" in name:
            continue
        frozen = (frozen_elements("embeddings", name, tensor, layout.text_size)
                  | frozen_elements("layernorm", name, tensor))
        if name.startswith("layers.0."):
            frozen[:] = True
        assert torch.equal(tensor[frozen], initial[name][frozen]), name
        trainable += int((~frozen).sum())
    assert summary["trainable"] == trainable and layout.text_size == summary["frozen_text_rows"]
    assert f"{trainable:,} trainable" in run_cli("logs", str(run_dir)).stdout
