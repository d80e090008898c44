"""What each experiment's sequences hold, read through the trainer's own stream."""

import pytest
import torch

from harness.config import compose_runs
from harness.data.dataset import open_dataset
from harness.train.loop import training_stream


def batches(experiment: str, data_root, *extra: str):
    config = compose_runs([f"experiment={experiment}", "scale=micro", f"paths.data_root={data_root}", *extra])[0].config
    dataset = open_dataset(config.data, data_root)
    stream = training_stream(config, dataset, rank=0, world=1)
    layout = dataset.layout(config.data.corpus)
    return [stream.batch(step).tokens for step in range(4)], layout


@pytest.mark.parametrize("experiment", ["uncond_random_init", "uncond_pretrained"])
def test_unconditional_sequences_have_no_text_target(experiment, data_root):
    tokens, layout = batches(experiment, data_root)
    for batch in tokens:
        targets = batch[:, 1:]
        assert not layout.is_text_target(targets).any()
        assert layout.is_image_target(targets).sum() == batch.shape[0] * 17  # 16 codes + <eoi>
        assert (batch[:, 0] == layout.boi).all()


def test_caption_lm_sequences_have_no_image_token(data_root):
    tokens, layout = batches("caption_lm", data_root)
    assert layout.codebook_size == 0
    full = open_dataset(compose_runs(["scale=micro"])[0].config.data, data_root).layout("captions")
    for batch in tokens:
        assert (batch < layout.text_size).all()
        assert not ((batch >= full.image_offset) & (batch <= full.eoi)).any()
        assert ((batch == layout.eos).sum(1) == 1).all()


def test_captions_keep_both(data_root):
    tokens, layout = batches("random_init", data_root)
    assert layout.is_text_target(tokens[0][:, 1:]).any() and layout.is_image_target(tokens[0][:, 1:]).any()


def test_a_text_mix_trains_on_pre_training_documents_in_the_caption_vocabulary(data_root):
    tokens, layout = batches("pretrained", data_root, "data.text_mix=0.3")
    rows = torch.cat(tokens)
    documents = rows[~layout.is_image_target(rows[:, 1:]).any(dim=1)]
    assert len(documents) == int(0.3 * len(rows))
    assert (documents[:, 0] == layout.bos).all() and (documents == layout.eos).any(dim=1).all()
    assert layout.codebook_size  # the captions' layout: image rows exist beside the documents
