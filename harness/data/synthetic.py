"""Deterministic synthetic corpora for smoke and micro scales.

Captions describe coloured shapes drawn with PIL, so caption and image carry the same information.
The text corpus (what the smoke LM is pre-trained on) has two registers, designed once (issue #19,
before the runs that use it) and described in the README:
- facts about invented countries, arithmetic and ordered lists: knowledge a language model can
  lose under image-caption training (the paper's language-forgetting claim, at smoke scale);
- scenes: multi-sentence descriptions of the same shapes world the captions describe, in a richer
  register than the captions (varied syntax, relations, comparisons, counts, negations, up to three
  shapes) using every caption word. The paper's pre-trained LM has read English, captions
  included, and captions are simpler than what it read (its Mechanism 2): so here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.42}
PLACES = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
          "bottom right": (0.73, 0.73), "centre": (0.5, 0.5)}


@dataclass(frozen=True)
class CaptionedImage:
    sample_id: str
    caption: str
    pixels: np.ndarray  # uint8 [H, W, 3]


def captioned_image(index: int, split: str, size: int, seed: int) -> CaptionedImage:
    """The index-th sample of a split: same arguments, same image and caption, on any machine."""
    rng = random.Random(f"{seed}/{split}/{index}")
    background = rng.choice(list(COLOURS))
    image = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(image)
    places = rng.sample(list(PLACES), k=rng.choice((1, 2)))
    phrases = []
    for place in places:
        colour = rng.choice([c for c in COLOURS if c != background])
        shape, size_name = rng.choice(SHAPES), rng.choice(list(SIZES))
        draw_shape(draw, shape, PLACES[place], SIZES[size_name] * size / 2 * 1.0, size, COLOURS[colour])
        phrases.append(f"a {size_name} {colour} {shape} at the {place}")
    caption = " and ".join(phrases) + f" on a {background} background"
    return CaptionedImage(f"{split}-{index:08d}", caption, np.asarray(image))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float,
                size: int, colour: tuple[int, int, int]) -> None:
    cx, cy = centre[0] * size, centre[1] * size
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)


# --- the facts corpus -------------------------------------------------------------------------

SYLLABLES = ("zor", "vi", "pel", "ka", "thu", "mar", "lo", "dre", "qua", "sen", "bri", "tol", "nu",
             "ga", "fen", "ox", "ri", "mo", "sta", "wel")
FOODS = ("bread", "fish", "rice", "honey", "plums", "cheese", "beans", "figs")
ANIMALS = ("fox", "owl", "horse", "goat", "heron", "lynx", "otter", "crow")
ENTITIES_PER_SEED = 48


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    food: str
    animal: str
    founded: int
    neighbour: str


def invented_countries(seed: int) -> list[Country]:
    """A fixed world of invented countries; the facts a pre-trained smoke LM should know."""
    rng = random.Random(f"{seed}/world")
    names: list[str] = []
    while len(names) < 2 * ENTITIES_PER_SEED:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if word not in names:
            names.append(word)
    countries, capitals = names[:ENTITIES_PER_SEED], names[ENTITIES_PER_SEED:]
    return [
        Country(name, capital, rng.choice(FOODS), rng.choice(ANIMALS), rng.randrange(1200, 1900),
                countries[(i + 1) % len(countries)])
        for i, (name, capital) in enumerate(zip(countries, capitals))
    ]


FACT_TEMPLATES = (
    "the capital of {c.name} is {c.capital} .",
    "{c.capital} is the capital city of {c.name} .",
    "people in {c.name} mostly eat {c.food} .",
    "the national animal of {c.name} is the {c.animal} .",
    "{c.name} was founded in {c.founded} .",
    "{c.name} shares a border with {c.neighbour} .",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# The pre-training mix: (register, share of documents). Fixed before any run used it.
MIX = (("facts", 0.45), ("scene", 0.35), ("sums", 0.10), ("counting", 0.10))


def text_document(index: int, split: str, seed: int) -> tuple[str, str]:
    """One document of the pre-training corpus (see MIX); (id, text)."""
    rng = random.Random(f"{seed}/{split}/text/{index}")
    kind, draw = MIX[-1][0], rng.random()
    for name, share in MIX:
        if draw < share:
            kind = name
            break
        draw -= share
    if kind == "scene":
        return f"{split}-text-{index:08d}", scene_description(rng)
    countries = invented_countries(seed)
    if kind == "facts":
        sentences = [rng.choice(FACT_TEMPLATES).format(c=rng.choice(countries)) for _ in range(3)]
    elif kind == "sums":
        sentences = []
        for _ in range(3):
            a, b = rng.randrange(0, 50), rng.randrange(0, 50)
            sentences.append(f"{a} plus {b} is {a + b} .")
    else:
        start = rng.randrange(0, 6)
        sentences = ["counting : " + " , ".join(NUMBER_WORDS[start:start + 5]) + " ."]
    return f"{split}-text-{index:08d}", " ".join(sentences)


# --- the scene register -----------------------------------------------------------------------
# Scenes of the captions' world, described the way a richer text would: the captions' own noun
# phrase ("a small red circle at the top left") inside varied frames, plus sentences no caption
# has. Scenes may hold three shapes; captions hold one or two.

COUNT_WORDS = ("no", "one", "two", "three")
PLACE_ROWS = {"top left": (0, 0), "top right": (0, 2), "bottom left": (2, 0), "bottom right": (2, 2),
              "centre": (1, 1)}  # (row, column) of each place on a 3x3 layout
OBJECT_FRAMES = (
    "there is a {size} {colour} {shape} at the {place} .",
    "at the {place} you can see a {size} {colour} {shape} .",
    "a {size} {colour} {shape} sits at the {place} .",
    "the {shape} at the {place} is {colour} and {size} .",
    "we see a {size} {colour} {shape} at the {place} on a {background} background .",
)
BACKGROUND_FRAMES = ("the background is {background} .", "everything is drawn on a {background} background .",
                     "this picture has a {background} background .")


@dataclass(frozen=True)
class SceneObject:
    size: str
    colour: str
    shape: str
    place: str


def scene_description(rng: random.Random) -> str:
    """A scene of one to three shapes described in two to six sentences."""
    background = rng.choice(list(COLOURS))
    places = rng.sample(list(PLACES), k=rng.choice((1, 2, 3)))
    objects = [SceneObject(rng.choice(list(SIZES)), rng.choice([c for c in COLOURS if c != background]),
                           rng.choice(SHAPES), place) for place in places]
    sentences = [rng.choice(BACKGROUND_FRAMES).format(background=background)]
    sentences.append(f"there {'is' if len(objects) == 1 else 'are'} {COUNT_WORDS[len(objects)]} "
                     f"shape{'' if len(objects) == 1 else 's'} in this picture .")
    for obj in objects:
        sentences.append(rng.choice(OBJECT_FRAMES).format(background=background, **obj.__dict__))
    extras = [_negation(rng, objects, background)]
    if len(objects) > 1:
        first, second = rng.sample(objects, 2)
        extras += [_relation(first, second), _comparison(first, second)]
    rng.shuffle(extras)
    sentences += extras[: rng.choice((1, 2))]
    if rng.random() < 0.5:
        rng.shuffle(sentences)
    return " ".join(sentences)


def _relation(a: SceneObject, b: SceneObject) -> str:
    (ra, ca), (rb, cb) = PLACE_ROWS[a.place], PLACE_ROWS[b.place]
    if ra != rb:
        where = "above" if ra < rb else "below"
    else:
        where = "to the left of" if ca < cb else "to the right of"
    return f"the {a.colour} {a.shape} is {where} the {b.colour} {b.shape} ."


def _comparison(a: SceneObject, b: SceneObject) -> str:
    if a.size == b.size:
        return f"the {a.shape} and the {b.shape} are both {a.size} ."
    return f"the {a.colour} {a.shape} is {'larger' if a.size == 'large' else 'smaller'} than the {b.colour} {b.shape} ."


def _negation(rng: random.Random, objects: list[SceneObject], background: str) -> str:
    missing = [s for s in SHAPES if s not in {o.shape for o in objects}]
    if missing and rng.random() < 0.5:
        return f"there is no {rng.choice(missing)} in this picture ."
    obj = rng.choice(objects)
    other = rng.choice([c for c in COLOURS if c not in (obj.colour, background)])
    return f"the {obj.shape} is not {other} ."
