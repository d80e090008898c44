import numpy as np
import pytest
import torch

from harness.config import compose_runs
from harness.data.image_tokenizer import ImageTokenizer, tiny_movq_config
from harness.data.vocab import VocabLayout
from harness.eval.generate import Sampling, generate, sample, sample_seed
from harness.eval.image_job import _captions, _chunk, _generate_images
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
    draws = {int(sample(logits, Sampling(top_p=0.7, seed=0), [torch.Generator().manual_seed(s)])) for s in range(200)}
    assert draws == {0, 1}


# Non-greedy ways of sampling: each must give a caption the same image wherever it is generated.
RANDOM_SAMPLINGS = [Sampling(temperature=1.0, seed=5), Sampling(temperature=1.0, top_k=8, seed=5),
                    Sampling(temperature=1.0, top_p=0.8, seed=5), Sampling(temperature=1.0, top_k=8, cfg_scale=3.0, seed=5)]


@pytest.mark.parametrize("sampling", RANDOM_SAMPLINGS, ids=["plain", "top_k", "top_p", "cfg"])
def test_a_captions_image_is_the_same_alone_in_a_batch_and_in_another_part(model, sampling):
    total, parts, caption = 8, 2, CAPTIONS[2]
    first, _ = _chunk(total, parts, 1)  # the second part's first global index, as image_job computes it
    index = first + 1                   # the caption's global sample index
    alone = generate(model, [caption], LAYOUT, PER_IMAGE, sampling, first_index=index)
    # One part, batches of 4: the caption is the 2nd row of the batch starting at index - 1.
    batched = generate(model, [CAPTIONS[0], caption, CAPTIONS[1], CAPTIONS[0]], LAYOUT, PER_IMAGE,
                       sampling, first_index=index - 1)
    # Two parts, batches of 2: the caption is the 2nd row of the second part's first batch.
    in_part = generate(model, [CAPTIONS[1], caption], LAYOUT, PER_IMAGE, sampling, first_index=first)
    assert torch.equal(alone[0], batched[1]) and torch.equal(alone[0], in_part[1])
    other_index = generate(model, [caption], LAYOUT, PER_IMAGE, sampling, first_index=index + 1)
    assert not torch.equal(alone[0], other_index[0])  # another sample: another draw


def test_sample_seeds_are_63_bit_and_differ_by_seed_and_index():
    seeds = {sample_seed(seed, index) for seed in range(4) for index in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2 ** 63 for s in seeds)
    assert sample_seed(0, 1) != sample_seed(1, 0)  # not seed + index


class _CodesAsImages:
    """A stand-in image tokenizer: each 'image' is its codes, so images compare code for code."""

    def decode_to_uint8(self, codes: torch.Tensor) -> np.ndarray:
        return codes.numpy()


def test_eval_parts_and_batch_sizes_do_not_change_the_images(micro_dataset):
    config = compose_runs(["scale=micro"])[0].config
    torch.manual_seed(0)
    micro = OpenLM(Architecture.from_config(config.model, micro_dataset.layout("captions").size)).eval()
    sampling, total = Sampling(temperature=1.0, top_k=16, seed=11), 6

    def images(parts: int, batch_size: int) -> np.ndarray:
        chunks = []
        for part in range(parts):
            first, last = _chunk(total, parts, part)
            captions = _captions(micro_dataset, config.data, first, last)
            chunks.append(_generate_images(micro, _CodesAsImages(), captions, micro_dataset, sampling,
                                           batch_size, first))
        return np.concatenate(chunks)

    whole = images(parts=1, batch_size=6)
    assert np.array_equal(whole, images(parts=2, batch_size=2))
    assert np.array_equal(whole, images(parts=3, batch_size=1))
