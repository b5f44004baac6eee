"""Image prompts, for image-to-video backbones (`backbone=svd`): each prompt is a first frame and an
optional caption. `ImagePrompt` is a `str` (its caption, or the image's file name when it has
none), so text-to-video backbones, rewards, logs and galleries treat it as the text they always
got; a backbone that conditions on images reads `prompt.image`. Two prompts are equal only when
their text and image are. A training sample's first frame is already in memory (the first frame of
its clip, vader.data.loader): its prompt carries the pixels (`pixels`, (3, H, W) in [0, 1]) and
`image` names where they came from.

    python train.py backbone=svd prompt_fn=images prompt_fn.path=first_frames/
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from vader.data.prompts import PromptSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImagePrompt(str):
    """A prompt that carries a first frame: `image`, a path (or, with `pixels`, a name for them)."""

    image: str
    pixels: torch.Tensor | None

    def __new__(cls, text: str, image: str, pixels: torch.Tensor | None = None) -> "ImagePrompt":
        prompt = super().__new__(cls, text)
        prompt.image, prompt.pixels = str(image), pixels
        return prompt

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) and getattr(other, "image", None) == self.image

    def __ne__(self, other: object) -> bool:  # str defines its own, which would ignore the image
        return not self == other

    def __hash__(self) -> int:
        return hash((str(self), self.image))

    def __reduce__(self):  # pickles (DataLoader workers, spawn) keep the image
        return (ImagePrompt, (str(self), self.image, self.pixels))


def read_folder(folder: Path, knob: str) -> list[ImagePrompt]:
    """The images of `folder`, sorted by name, each with the caption of a same-named .txt file."""
    if not folder.is_dir():
        raise FileNotFoundError(f"prompt_fn.{knob}='{folder}' is not a folder; give a folder of first frames "
                                f"({', '.join(IMAGE_SUFFIXES)}), each with an optional same-named .txt caption")
    prompts = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = image.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8-sig").strip() if caption.is_file() else ""
        prompts.append(ImagePrompt(text or image.stem, str(image.resolve())))
    if not prompts:
        raise ValueError(f"prompt_fn.{knob}='{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return prompts


def images(path: str, val_path: str | None = None, val_fraction: float = 0.25, seed: int = 0) -> PromptSource:
    """First frames from `path`; held-out ones from `val_path`, else a seeded `val_fraction` of them."""
    train = read_folder(Path(path), "path")
    if val_path is not None:
        return PromptSource(train=train, val=read_folder(Path(val_path), "val_path"))
    if not 0 < val_fraction < 1 or len(train) < 2:
        raise ValueError(f"prompt_fn.val_fraction={val_fraction} of {len(train)} images: hold out a share "
                         "between 0 and 1 of at least 2 images, or give prompt_fn.val_path=<a folder>")
    held = set(random.Random(seed).sample(range(len(train)), min(max(1, round(len(train) * val_fraction)),
                                                                len(train) - 1)))
    return PromptSource(train=[p for i, p in enumerate(train) if i not in held],
                        val=[p for i, p in enumerate(train) if i in held])
