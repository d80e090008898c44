"""Caption compliance of a synthetic-world image (GenEval-style, with a deterministic analyser in
the detector's place): does the image show what its caption says?

A smoke caption reads "a <size> <colour> <shape> at the <place> [and ...] on a <colour> background"
(harness.data.synthetic). The analyser classifies every pixel to the nearest palette colour, then
checks, per caption attribute:
- background: the palette colour of the image border;
- per phrase, colour: the phrase's colour covers the middle of its place;
- shape and size: of the six (shape, size) masks the generator could draw at that place (drawn by
  the generator's own code), the one that best overlaps (IoU) the pixels of the phrase's colour
  around the place; pixels of a later phrase's colour are left out, since a later shape is drawn
  over an earlier one.
A caption complies when every attribute does. Chance levels are those of guessing each attribute
uniformly from its vocabulary (the phrase's colour excludes the background's).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from harness.data import synthetic
from harness.errors import HarnessError

PALETTE = np.array(list(synthetic.COLOURS.values()), dtype=np.float64)
NAMES = list(synthetic.COLOURS)
FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
CHANCE = {"background": 1 / len(NAMES), "colour": 1 / (len(NAMES) - 1), "shape": 1 / len(synthetic.SHAPES),
          "size": 1 / len(synthetic.SIZES)}
CORE = 0.05  # half-width, as a share of the image, of the square a shape must cover at its place


@dataclass(frozen=True)
class Phrase:
    size: str
    colour: str
    shape: str
    place: str


@dataclass(frozen=True)
class Caption:
    background: str
    phrases: tuple[Phrase, ...]


def parse(caption: str) -> Caption:
    """The attributes of a synthetic caption; anything else is a HarnessError naming it."""
    body, marker, background = caption.rpartition(" on a ")
    background = background.removesuffix(" background")
    if not marker or background not in synthetic.COLOURS:
        raise HarnessError(f"not a synthetic-world caption: {caption!r}")
    phrases = []
    for text in body.split(" and "):
        words = text.split(" at the ")
        parts = words[0].split()
        if len(words) != 2 or len(parts) != 4 or parts[0] != "a":
            raise HarnessError(f"not a synthetic-world phrase: {text!r} in {caption!r}")
        phrase = Phrase(parts[1], parts[2], parts[3], words[1])
        if (phrase.size not in synthetic.SIZES or phrase.colour not in synthetic.COLOURS
                or phrase.shape not in synthetic.SHAPES or phrase.place not in synthetic.PLACES):
            raise HarnessError(f"not a synthetic-world phrase: {text!r} in {caption!r}")
        phrases.append(phrase)
    return Caption(background, tuple(phrases))


def palette_indices(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> [H, W] index of the nearest palette colour."""
    distance = ((pixels[..., None, :].astype(np.float64) - PALETTE) ** 2).sum(-1)
    return distance.argmin(-1)


def check(pixels: np.ndarray, caption: str) -> dict[str, list[bool]]:
    """Per attribute, one verdict per occurrence (background once, the others once per phrase)."""
    parsed = parse(caption)
    labels = palette_indices(pixels)
    found: dict[str, list[bool]] = {"background": [_border_colour(labels) == NAMES.index(parsed.background)],
                                     "colour": [], "shape": [], "size": []}
    for i, phrase in enumerate(parsed.phrases):
        colour = NAMES.index(phrase.colour)
        present = _covers_place(labels, colour, synthetic.PLACES[phrase.place])
        later = {NAMES.index(p.colour) for p in parsed.phrases[i + 1:]} - {colour}
        shape, size = _best_template(labels, colour, later, phrase.place) if present else (None, None)
        found["colour"].append(present)
        found["shape"].append(shape == phrase.shape)
        found["size"].append(size == phrase.size)
    return found


ATTRIBUTES = tuple(CHANCE)  # the order of a tally's rows


def tally(images: np.ndarray | list[np.ndarray], captions: list[str]) -> np.ndarray:
    """int [n, attributes, 2]: per image and attribute, (correct, checked). Tallies of several
    parts of an evaluation concatenate."""
    if len(images) != len(captions) or not len(images):
        raise HarnessError(f"compliance: {len(images)} images for {len(captions)} captions")
    out = np.zeros((len(captions), len(ATTRIBUTES), 2), dtype=np.int64)
    for i, (pixels, caption) in enumerate(zip(images, captions)):
        verdicts = check(pixels, caption)
        out[i] = [(sum(verdicts[name]), len(verdicts[name])) for name in ATTRIBUTES]
    return out


def summarise(tallies: np.ndarray) -> dict:
    """Per-attribute and whole-caption accuracy, with chance levels (the whole caption's from each
    caption's own number of phrases: its colour checks)."""
    hits, counts = tallies[..., 0], tallies[..., 1]
    whole = (hits == counts).all(1)
    phrases = counts[:, ATTRIBUTES.index("colour")]
    per_phrase = CHANCE["colour"] * CHANCE["shape"] * CHANCE["size"]
    return {"whole_caption": float(whole.mean()), "n": len(tallies),
            "whole_caption_chance": float(np.mean(CHANCE["background"] * per_phrase ** phrases)),
            "attributes": {name: {"accuracy": float(hits[:, i].sum() / counts[:, i].sum()), "chance": CHANCE[name],
                                  "n": int(counts[:, i].sum())} for i, name in enumerate(ATTRIBUTES)}}


def score(images: np.ndarray | list[np.ndarray], captions: list[str]) -> dict:
    return summarise(tally(images, captions))


def _border_colour(labels: np.ndarray) -> int:
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return int(np.bincount(border, minlength=len(NAMES)).argmax())


def _covers_place(labels: np.ndarray, colour: int, centre: tuple[float, float]) -> bool:
    """The colour covers most of a small square at the middle of the place."""
    size = labels.shape[0]
    cx, cy = round(centre[0] * size), round(centre[1] * size)
    half = max(1, round(CORE * size))
    return bool((labels[cy - half:cy + half, cx - half:cx + half] == colour).mean() >= 0.5)


def _best_template(labels: np.ndarray, colour: int, later: set[int], place: str) -> tuple[str, str]:
    size = labels.shape[0]
    window = _template(size, "square", "large", place)  # the largest extent any phrase has there
    observed = (labels == colour) & window
    counted = ~np.isin(labels, list(later))
    best, best_iou = ("", ""), -1.0
    for shape in synthetic.SHAPES:
        for size_name in synthetic.SIZES:
            mask = _template(size, shape, size_name, place)
            union = ((observed | mask) & counted).sum()
            iou = (observed & mask & counted).sum() / union if union else 0.0
            if iou > best_iou:
                best, best_iou = (shape, size_name), iou
    return best


@lru_cache(maxsize=256)
def _template(size: int, shape: str, size_name: str, place: str) -> np.ndarray:
    """The pixels the generator fills for this shape, size and place (its own drawing code)."""
    image = Image.new("1", (size, size), 0)
    synthetic.draw_shape(ImageDraw.Draw(image), shape, synthetic.PLACES[place],
                         synthetic.SIZES[size_name] * size / 2, size, 1)
    return np.asarray(image, dtype=bool)
