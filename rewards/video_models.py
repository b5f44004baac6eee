"""Helpers the video-model rewards share (rewards/actpred.py, rewards/xclip.py,
rewards/object.py): loading a transformers model once per process, reading a checkpoint's
preprocessor_config.json, VideoMAE-style preprocessing of a clip sampled to the model's frame
count, and matching class names (Kinetics actions, COCO objects) to prompts.
"""
from __future__ import annotations

import difflib
import json
import re
from typing import Any

import torch
import torch.nn.functional as F

from backbones.loading import Source, fetch_file, load_part, parse_dtype
from rewards.common import flatten_frames, resize_crop_normalize

# PIL resample codes as stored in preprocessor_config.json -> torch interpolation modes.
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_CACHE: dict[tuple, Any] = {}  # (class, source, dtype) -> loaded model, one per process


def check_frames_option(frames: str | int) -> None:
    if not (frames in ("all", "random") or (isinstance(frames, int) and frames >= 1)):
        raise ValueError(f"frames={frames!r}: use 'all', 'random' or a positive int n (every n-th)")


def read_json(source: Source) -> dict[str, Any]:
    """A small JSON file of a checked source (local folder, hub cache, or downloaded)."""
    with open(fetch_file(source)) as f:
        return json.load(f)


def load_cached(cls: Any, key: str, location: str, dtype: str, **kwargs: Any) -> Any:
    """`cls` from `location` (hub id or folder), frozen and in eval mode, loaded once per process."""
    torch_dtype = parse_dtype(dtype, "reward_fn.dtype")
    cache_key = (cls.__name__, location, dtype)
    if cache_key not in _CACHE:
        model = load_part(cls, Source(key, location, "config.json"), torch_dtype, **kwargs)
        model.requires_grad_(False).eval()
        _CACHE[cache_key] = model
    return _CACHE[cache_key]


def videomae_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Resize / crop / normalise settings of a VideoMAEImageProcessor preprocessor_config.json
    (as X-CLIP and VideoMAE ship it), with that class's defaults for missing keys: shortest edge
    224, centre crop 224 x 224, bilinear, mean/std 0.5."""
    size = config.get("size", {"shortest_edge": 224})
    if isinstance(size, int):  # legacy files: "size": 224 means the shortest edge
        size = {"shortest_edge": size}
    crop = config.get("crop_size", {"height": 224, "width": 224})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if crop["height"] != crop["width"]:
        raise ValueError(f"crop_size {crop} is not square; only square crops are supported")
    if "shortest_edge" not in size:
        raise ValueError(f"preprocessor size {size} has no shortest_edge; expected a "
                         "VideoMAEImageProcessor config")
    resample = config.get("resample", 2)
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample} is not one of {sorted(RESAMPLE)} (PIL codes)")
    normalize = config.get("do_normalize", True)
    return dict(
        size=size["shortest_edge"] if config.get("do_resize", True) else None,
        crop=crop["height"] if config.get("do_center_crop", True) else None,
        mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))) if normalize else (0.0, 0.0, 0.0),
        std=tuple(config.get("image_std", (0.5, 0.5, 0.5))) if normalize else (1.0, 1.0, 1.0),
        mode=RESAMPLE[resample])


def resize_to(images: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    if (height, width) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=(height, width), mode=mode,
                         align_corners=None if mode == "nearest" else False,
                         antialias=mode in ("bilinear", "bicubic"))


def clip_pixels(model: torch.nn.Module, frames: torch.Tensor, num_frames: int,
                settings: dict[str, Any]) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B, num_frames, 3, h, w) pixel values for a video model, in
    the model's dtype and on the frames' device (the model follows the frames there: the trainer
    moves only the backbone)."""
    param = next(model.parameters())
    if param.device != frames.device:
        model.to(frames.device)
    clip = sample_clip(frames, num_frames)  # (B, n, 3, H, W)
    pixels = videomae_preprocess(flatten_frames(clip).float(), settings)
    return pixels.view(clip.shape[0], num_frames, *pixels.shape[1:]).to(param.dtype)


def videomae_preprocess(images: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> pixel values as VideoMAEImageProcessor makes them: shorter side
    to `size` (None: no resize), centre crop, normalise."""
    size = settings["size"] if settings["size"] is not None else min(images.shape[-2:])
    return resize_crop_normalize(images, size, settings["crop"], settings["mean"],
                                 settings["std"], settings["mode"])


def clip_index(t: int, n: int) -> torch.Tensor:
    """Indices of n frames evenly spaced over t, first and last included; repeats when t < n."""
    return torch.linspace(0, t - 1, n).round().long()


def sample_clip(frames: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, ...) -> (B, n, ...): n frames evenly spaced over the clip, first and last
    included; frames repeat when T < n."""
    return frames.index_select(1, clip_index(frames.shape[1], n).to(frames.device))


def clip_scored_frames(t: int, n: int) -> torch.Tensor:
    """The distinct frames `sample_clip` takes from t: all of them when t <= n (the spacing is
    under one frame, so rounding hits each), else n distinct ones (spacing over one frame).
    Given just those, `sample_clip` takes them all in order: the same clip."""
    return torch.unique(clip_index(t, n))


def find_label(name: str, id2label: dict[int, str], key: str) -> int:
    """The class index whose name is `name` (case-insensitive); ValueError with close matches."""
    lower = {label.lower(): int(i) for i, label in id2label.items()}
    if name.lower().strip() in lower:
        return lower[name.lower().strip()]
    close = difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.4)
    hint = f"close matches: {close}" if close else f"the model has {len(lower)} classes, e.g. " \
        f"{list(lower)[:5]}"
    raise ValueError(f"{key}={name!r} is not a class of this model; {hint}")


def label_in_text(text: str, id2label: dict[int, str], what: str, plurals: bool = False,
                  skip: tuple[str, ...] = ()) -> int:
    """Index of the longest class name occurring in `text` as whole words (case-insensitive;
    with `plurals`, 'dogs' / 'boxes' count for 'dog' / 'box'). ValueError naming the text when
    none does."""
    suffix = r"(?:e?s)?" if plurals else ""
    best: tuple[int, int] | None = None  # (length, index)
    for i, label in id2label.items():
        if label in skip:
            continue
        if re.search(rf"(?<!\w){re.escape(label.lower())}{suffix}(?!\w)", text.lower()):
            if best is None or len(label) > best[0]:
                best = (len(label), int(i))
    if best is None:
        raise ValueError(f"no {what} class name occurs in the prompt {text!r}; name the {what} "
                         f"in the prompt or set it in the reward config")
    return best[1]


def check_prompt_labels(prompts: list[str], match: Any, what: str, key: str) -> None:
    """Raise one ValueError listing every prompt in which `match` (a prompt -> class index
    function raising ValueError) finds no class. The trainer calls this through a reward's
    `check_prompts` on all its prompts when it is built, so a missing class stops every process
    at once, before training, instead of one process mid-run while the others wait for it."""
    unmatched = []
    for prompt in dict.fromkeys(prompts):
        try:
            match(prompt)
        except ValueError:
            unmatched.append(prompt)
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of {len(set(prompts))} prompts name no {what} class of this model: "
            f"{unmatched}. Name one in each prompt, drop those prompts, or set {key} to score "
            "every video against one class")
