"""The synthetic world's pre-training corpus contains the captions' language, in a richer register."""

import random
import re

import pytest

from harness.data import synthetic


def _captions(n: int) -> list[str]:
    return [synthetic.captioned_image(i, "train", 32, 1234).caption for i in range(n)]


def _documents(n: int) -> list[str]:
    return [synthetic.text_document(i, "train", 1234)[1] for i in range(n)]


def test_the_mix_is_a_distribution_and_the_corpus_follows_it():
    assert sum(share for _, share in synthetic.MIX) == pytest.approx(1.0)
    documents = _documents(2000)
    scenes = sum("picture" in d or "background" in d for d in documents) / len(documents)
    assert scenes == pytest.approx(dict(synthetic.MIX)["scene"], abs=0.04)


def test_every_caption_word_is_in_the_pre_training_corpus():
    caption_words = {w for c in _captions(500) for w in c.split()}
    corpus_words = {w for d in _documents(2000) for w in d.split()}
    assert caption_words <= corpus_words, caption_words - corpus_words


def test_scenes_are_richer_than_captions():
    rng = random.Random(0)
    scenes = [synthetic.scene_description(rng) for _ in range(500)]
    captions = _captions(500)
    assert sum(map(len, map(str.split, scenes))) / 500 > 1.5 * sum(map(len, map(str.split, captions))) / 500
    for register in ("above", "below", "to the left of", "larger than", "smaller than", " not ", "no ", "three shapes"):
        assert any(register in s for s in scenes), register
    # Captions keep one template: "a <size> <colour> <shape> at the <place>" joined by "and", then the background.
    pattern = re.compile(r"^a \w+ \w+ \w+ at the [\w ]+?( and a \w+ \w+ \w+ at the [\w ]+?)? on a \w+ background$")
    assert all(pattern.match(c) for c in captions)


def test_scene_relations_follow_the_places():
    a = synthetic.SceneObject("small", "red", "circle", "top left")
    b = synthetic.SceneObject("large", "blue", "square", "bottom left")
    c = synthetic.SceneObject("large", "green", "triangle", "top right")
    assert synthetic._relation(a, b) == "the red circle is above the blue square ."
    assert synthetic._relation(a, c) == "the red circle is to the left of the green triangle ."
    assert synthetic._comparison(a, b) == "the red circle is smaller than the blue square ."
