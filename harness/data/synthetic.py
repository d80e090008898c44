"""Deterministic synthetic corpora for smoke and micro scales.

Captions describe coloured shapes drawn with PIL, so caption and image carry the same information.
The text corpus is deliberately not captions: templated facts about invented entities, arithmetic
and ordered lists, so a language model pre-trained on it knows things that image-caption training
can make it forget (the paper's language-forgetting claim, at smoke scale).
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


def text_document(index: int, split: str, seed: int) -> tuple[str, str]:
    """One document of the facts corpus: a few facts, a sum, or an ordered list; (id, text)."""
    rng = random.Random(f"{seed}/{split}/text/{index}")
    countries = invented_countries(seed)
    kind = rng.random()
    if kind < 0.6:
        sentences = [rng.choice(FACT_TEMPLATES).format(c=rng.choice(countries)) for _ in range(3)]
    elif kind < 0.8:
        sentences = []
        for _ in range(3):
            a, b = rng.randrange(0, 50), rng.randrange(0, 50)
            sentences.append(f"{a} plus {b} is {a + b} .")
    else:
        start = rng.randrange(0, 6)
        sentences = ["counting : " + " , ".join(NUMBER_WORDS[start:start + 5]) + " ."]
    return f"{split}-text-{index:08d}", " ".join(sentences)
