"""The caption-compliance analyser: right on the generator's own images, wrong captions caught,
noise near chance."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from harness.data import synthetic
from harness.errors import HarnessError
from harness.eval import compliance


class _Phrase(NamedTuple):
    """A caption's background and first phrase, to change one attribute of."""
    background: str
    size: str
    colour: str
    shape: str
    place: str


def real(count: int, size: int = 64) -> list[synthetic.CaptionedImage]:
    return [synthetic.captioned_image(i, "val", size, 1234) for i in range(count)]


@pytest.mark.parametrize("size", [64, 32])
def test_ground_truth_images_comply_with_their_captions(size):
    items = real(400, size)
    result = compliance.score([x.pixels for x in items], [x.caption for x in items])
    assert result["whole_caption"] >= 0.98, result
    assert result["whole_caption_chance"] < 0.01


@pytest.mark.parametrize("attribute, swap", [
    ("background", lambda p: p._replace(background=next(c for c in synthetic.COLOURS if c != p.background))),
    ("shape", lambda p: p._replace(shape=next(s for s in synthetic.SHAPES if s != p.shape))),
    ("size", lambda p: p._replace(size="small" if p.size == "large" else "large")),
])
def test_a_caption_that_says_otherwise_is_caught(attribute, swap):
    caught = 0
    items = real(60)
    for item in items:
        parsed = compliance.parse(item.caption)
        phrase = _Phrase(parsed.background, *vars(parsed.phrases[0]).values())
        wrong = swap(phrase)
        caption = item.caption.replace(f"a {phrase.size} {phrase.colour} {phrase.shape}",
                                       f"a {wrong.size} {wrong.colour} {wrong.shape}", 1)
        caption = caption.replace(f"on a {phrase.background} background", f"on a {wrong.background} background")
        verdicts = compliance.check(item.pixels, caption)
        caught += not verdicts[attribute][0]
    assert caught >= 0.95 * len(items)


def test_noise_scores_near_chance():
    rng = np.random.default_rng(0)
    items = real(100)
    noise = [rng.integers(0, 256, x.pixels.shape, dtype=np.uint8) for x in items]
    result = compliance.score(noise, [x.caption for x in items])
    assert result["whole_caption"] <= 0.02


def test_text_that_is_not_a_synthetic_caption_is_named():
    with pytest.raises(HarnessError, match="not a synthetic-world caption: 'a dog'"):
        compliance.parse("a dog")
    with pytest.raises(HarnessError, match="not a synthetic-world phrase: 'a huge red circle at the centre'"):
        compliance.parse("a huge red circle at the centre on a blue background")
