"""The shapes world's language: every prompt is "a <colour> <shape> <motion> on a <background>
background", e.g. "a red circle moves left on a black background".

A prompt is a `Scene` (four attributes); `parse` reads one back and refuses anything else with
the grammar in the message. Held-out *combinations*: for each colour-shape pair one motion never
appears in training (motion = (colour + 2·shape) mod 6), so every colour, shape and motion, every
colour-shape pair, every shape-motion pair with 5 colours and every colour-motion pair with at
least 2 shapes are seen in training, but 18 colour-shape-motion triples (54 prompts with their
backgrounds) only at evaluation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

# Object colours, RGB in [0, 1]: saturated, at least 0.58 apart from each other and from the
# backgrounds (green on gray is the closest), so a pixel's nearest colour is unambiguous away from
# anti-aliased edges.
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.15), "blue": (0.1, 0.25, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.9, 0.15, 0.85), "cyan": (0.1, 0.85, 0.9)}
BACKGROUNDS = {"black": (0.05, 0.05, 0.05), "gray": (0.5, 0.5, 0.5), "white": (0.95, 0.95, 0.95)}
SHAPES = ("circle", "square", "triangle")
# Motion name -> its words in the prompt.
MOTIONS = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
           "still": "stays still", "grows": "grows"}
ATTRIBUTES = ("background", "colour", "shape", "motion")
# How many values each attribute has: a judge guessing at random is right 1/n of the time.
CHOICES = {"background": len(BACKGROUNDS), "colour": len(COLOURS), "shape": len(SHAPES),
           "motion": len(MOTIONS)}
PATTERN = ("a <colour> <shape> <motion> on a <background> background, with colour in "
           f"{sorted(COLOURS)}, shape in {list(SHAPES)}, motion in {list(MOTIONS.values())}, "
           f"background in {sorted(BACKGROUNDS)}")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str
    background: str

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, COLOURS), ("shape", self.shape, SHAPES),
                                     ("motion", self.motion, MOTIONS),
                                     ("background", self.background, BACKGROUNDS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not in the shapes world: choose one of "
                                 f"{sorted(allowed)}")

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {MOTIONS[self.motion]} on a {self.background} background"

    def get(self, attribute: str) -> str:
        return getattr(self, attribute)


def parse(prompt: str) -> Scene:
    """The scene a prompt describes; ValueError naming the grammar if it is not one."""
    words = prompt.strip().lower().split()
    motion_words = {v: k for k, v in MOTIONS.items()}
    # a <colour> <shape> <one or two motion words> on a <background> background
    if len(words) >= 7 and words[0] == "a" and words[-4:-2] == ["on", "a"] and \
            words[-1] == "background":
        motion = motion_words.get(" ".join(words[3:-4]))
        if motion and words[1] in COLOURS and words[2] in SHAPES and words[-2] in BACKGROUNDS:
            return Scene(words[1], words[2], motion, words[-2])
    raise ValueError(f"prompt {prompt!r} is not from the shapes world; its prompts read {PATTERN}")


def vocabulary() -> list[str]:
    """Every word a world prompt can use, in a fixed order (the world tokenizer's vocabulary)."""
    words = ["a", "on", "background", *COLOURS, *SHAPES, *BACKGROUNDS]
    for phrase in MOTIONS.values():
        words += [w for w in phrase.split() if w not in words]
    return list(dict.fromkeys(words))


def heldout_triple(colour: str, shape: str, motion: str) -> bool:
    c, s = list(COLOURS).index(colour), SHAPES.index(shape)
    return list(MOTIONS)[(c + 2 * s) % len(MOTIONS)] == motion


def scenes(split: str = "all") -> list[Scene]:
    """All 324 scenes, or the 270 of split "train" or the 54 of split "heldout", in a fixed order."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split {split!r}: choose all, train or heldout")
    out = []
    for colour, shape, motion, background in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS):
        held = heldout_triple(colour, shape, motion)
        if split == "all" or held == (split == "heldout"):
            out.append(Scene(colour, shape, motion, background))
    return out


def heldout_sample() -> list[Scene]:
    """One held-out scene per held-out triple (18), the background cycling with the triple, so
    every background meets every shape and every triple is evaluated, at a third of the cost of
    all 54."""
    out = []
    for i, (colour, shape) in enumerate(itertools.product(COLOURS, SHAPES)):
        motion = next(m for m in MOTIONS if heldout_triple(colour, shape, m))
        out.append(Scene(colour, shape, motion, list(BACKGROUNDS)[(i + i // 3) % len(BACKGROUNDS)]))
    return out
