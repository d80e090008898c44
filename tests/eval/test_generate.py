import numpy as np
import pytest
import torch

from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config
from harness.data.vocab import VocabLayout
from harness.eval.generate import Sampling, generate, sample
from harness.model.open_lm import Architecture, OpenLM

LAYOUT = VocabLayout(text_size=40, pad=0, bos=1, eos=2, codebook_size=32)
CAPTIONS = [[5, 6, 7], [9], [11, 12, 13, 14, 15]]  # different lengths: left-padded together
PER_IMAGE = 16


@pytest.fixture(scope="module", params=["rotary", "head_rotary"])
def model(request) -> OpenLM:
    torch.manual_seed(0)
    arch = Architecture(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, vocab_size=LAYOUT.size,
                        positional=request.param, norm_eps=1e-5, init_std=0.2)
    return OpenLM(arch).eval()


def test_the_kv_cache_changes_nothing(model):
    sampling = Sampling(temperature=1.0, top_k=8, seed=3)
    cached = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, sampling, use_cache=True)
    full = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, sampling, use_cache=False)
    assert torch.equal(cached, full)


def test_top_k_1_is_greedy(model):
    ids = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, Sampling(top_k=1, seed=0))
    tokens = torch.tensor([[LAYOUT.bos, *CAPTIONS[1], LAYOUT.boi]])
    for code in ids[1]:  # the caption alone, greedily, without the cache
        logits = model(tokens)[0, -1, LAYOUT.image_offset: LAYOUT.image_offset + LAYOUT.codebook_size]
        assert int(logits.argmax()) == int(code)
        tokens = torch.cat([tokens, torch.tensor([[LAYOUT.image_offset + int(code)]])], 1)


def test_the_same_seed_gives_the_same_ids_and_a_caption_the_same_image_alone_or_batched(model):
    sampling = Sampling(temperature=0.9, top_p=0.9, seed=7)
    first = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, sampling)
    assert torch.equal(first, generate(model, CAPTIONS, LAYOUT, PER_IMAGE, sampling))
    assert not torch.equal(first, generate(model, CAPTIONS, LAYOUT, PER_IMAGE, Sampling(temperature=0.9, top_p=0.9, seed=8)))
    greedy = Sampling(top_k=1)
    batched = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, greedy)
    alone = generate(model, [CAPTIONS[2]], LAYOUT, PER_IMAGE, greedy)
    assert torch.equal(batched[2], alone[0])


def test_guidance_runs_and_scale_one_is_no_guidance(model):
    plain = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, Sampling(top_k=1, cfg_scale=1.0))
    guided = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, Sampling(top_k=1, cfg_scale=3.0))
    assert guided.shape == plain.shape


def test_exactly_one_image_of_codes_per_caption_decodes_to_one_image(model):
    ids = generate(model, CAPTIONS, LAYOUT, PER_IMAGE, Sampling(seed=1))
    assert ids.shape == (3, PER_IMAGE) and ids.min() >= 0 and ids.max() < LAYOUT.codebook_size
    tokenizer = ImageTokenizer.random(tiny_movq_config(LAYOUT.codebook_size), seed=0)
    images = tokenizer.decode_to_uint8(ids)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8


def test_top_p_keeps_the_smallest_set_above_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample(logits, Sampling(top_p=0.7, seed=0), torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0, 1}
