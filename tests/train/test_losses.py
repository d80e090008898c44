"""The loss split on a hand-made batch, against per-modality losses computed independently."""

import math

import torch

from harness.data.vocab import VocabLayout
from harness.train.losses import LossSums, count_targets, split_sums, token_losses

LAYOUT = VocabLayout(text_size=6, pad=0, bos=1, eos=2, codebook_size=4)  # image 6..9, boi 10, eoi 11


def reference_nll(logits_row: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out with math only."""
    top = max(logits_row)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits_row))
    return log_z - logits_row[target]


def test_loss_split_matches_an_independent_computation():
    # Two sequences: <bos> 3 4 <boi> 6 9 <eoi> <pad> and <bos> 5 <boi> 7 8 <eoi> <pad> <pad>
    tokens = torch.tensor([[1, 3, 4, 10, 6, 9, 11, 0], [1, 5, 10, 7, 8, 11, 0, 0]])
    torch.manual_seed(0)
    logits = torch.randn(2, 7, LAYOUT.size, dtype=torch.float64)
    targets = tokens[:, 1:]
    sums = split_sums(token_losses(logits, targets), targets, LAYOUT)

    text_targets = {3, 4, 5, 10}          # caption tokens and <boi>
    image_targets = {6, 7, 8, 9, 11}      # image codes and <eoi>
    text, image = [], []
    for b in range(2):
        for t in range(7):
            target = int(targets[b, t])
            nll = reference_nll(logits[b, t].tolist(), target)
            if target in text_targets:
                text.append(nll)
            elif target in image_targets:
                image.append(nll)
    summary = sums.summary()
    assert (len(text), len(image)) == (5, 6)
    assert math.isclose(summary["loss_text"], sum(text) / len(text), rel_tol=1e-6)
    assert math.isclose(summary["loss_image"], sum(image) / len(image), rel_tol=1e-6)
    assert math.isclose(summary["loss"], (sum(text) + sum(image)) / 11, rel_tol=1e-6)
    assert sums.tokens == count_targets(tokens, LAYOUT) == 11


def test_sums_reduce_token_weighted_not_batch_weighted():
    rank_a = LossSums(torch.tensor([10.0, 5, 0, 0], dtype=torch.float64))   # 5 text tokens, mean 2
    rank_b = LossSums(torch.tensor([2.0, 1, 8, 2], dtype=torch.float64))    # 1 text (2), 2 image (4)
    total = LossSums.zero()
    total += rank_a
    total += rank_b
    assert total.summary() == {"loss": 20 / 8, "loss_text": 12 / 6, "loss_image": 4.0}


def test_a_text_only_layout_has_no_image_loss():
    layout = LAYOUT.text_only()
    targets = torch.tensor([[3, 4, 2, 0]])
    sums = split_sums(torch.ones(1, 4), targets, layout)
    assert sums.summary() == {"loss": 1.0, "loss_text": 1.0, "loss_image": None}
