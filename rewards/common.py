"""Pieces every learned reward shares: frames to an image batch, differentiable preprocessing
that mirrors the reference processors, and per-frame scores to one score per video.

Preprocessing is torch ops on tensors (no PIL, no numpy), so gradients flow from the score back
to the frames. `resize_crop_normalize` reproduces what CLIPImageProcessor / open_clip's transform
do: bicubic resize of the shorter side, center crop, normalise; torch's antialiased bicubic
matches PIL's to within a few 1e-3 on natural images (tests measure it per reward).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

AGGREGATIONS = ("mean", "min", "softmin", "mean+min")


def flatten_frames(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B*T, C, H, W)."""
    return frames.reshape(-1, *frames.shape[2:])


# How a frame becomes the model's square input: "crop" as the reference processors do (shorter
# side resized, centre square cropped: a 320x512 frame loses 37.5% of its width), or "squash"
# (the whole frame resized to the square, aspect ratio not kept), as VADER's aesthetic and HPS
# losses do (torchvision Resize((224, 224))).
RESIZE_MODES = ("crop", "squash")


def check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"reward_fn.resize={resize!r}: use 'crop' (shorter side, centre crop, "
                         "as the model's processor) or 'squash' (whole frame to the square, VADER)")


def resize_crop_normalize(images: torch.Tensor, size: int, crop: int | None,
                          mean: tuple[float, ...], std: tuple[float, ...],
                          mode: str = "bicubic", crop_rounding: str = "floor",
                          resize: str = "crop") -> torch.Tensor:
    """images (N, 3, H, W) in [0, 1] -> the model's input: the shorter side resized to `size`
    (antialiased), a centred `crop` x `crop` square (None: no crop), then (x - mean) / std.
    With resize="squash" the whole frame is resized to `crop` x `crop` (`size` x `size` when
    crop is None) instead, so nothing is cut off (see RESIZE_MODES).

    Both reference libraries truncate the longer side (`int(size * long / short)`); they differ
    in where a centred crop starts when the margin is odd: transformers' processors floor it
    (`crop_rounding="floor"`), torchvision / open_clip round it (`"round"`)."""
    check_resize(resize)
    h, w = images.shape[-2:]
    if resize == "squash":
        side = crop if crop is not None else size
        new_h, new_w, crop = side, side, None
    elif h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False,
                               antialias=mode in ("bilinear", "bicubic"))
    if crop is not None:
        if crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding={crop_rounding!r}: use 'floor' or 'round'")
        start = (lambda m: m // 2) if crop_rounding == "floor" else (lambda m: int(round(m / 2)))
        top, left = start(new_h - crop), start(new_w - crop)
        images = images[..., top:top + crop, left:left + crop]
    mean_t = channel_constant(tuple(mean), images.device, images.dtype)
    std_t = channel_constant(tuple(std), images.device, images.dtype)
    return (images - mean_t) / std_t


@functools.lru_cache(maxsize=32)
def channel_constant(values: tuple[float, ...], device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """`values` as a (1, C, 1, 1) tensor, made once per device and dtype: building it in every
    call meant a host-to-device copy per reward call. Never modified (callers only read it)."""
    # Made outside inference mode, so autograd may save it for backward (division does).
    with torch.inference_mode(False):
        return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def aggregate(per_frame: torch.Tensor, how: str = "mean", temperature: float = 0.1) -> torch.Tensor:
    """(B, T) scores -> (B,). mean; min (the worst frame); softmin (a smooth min,
    -t * logsumexp(-x / t) + t * log T, which lies between min and mean); mean+min (their
    average: rewards the typical frame and the worst one)."""
    if how == "mean":
        return per_frame.mean(dim=1)
    if how == "min":
        return per_frame.min(dim=1).values
    if how == "softmin":
        n = per_frame.shape[1]
        return -temperature * torch.logsumexp(-per_frame / temperature, dim=1) \
            + temperature * math.log(n)
    if how == "mean+min":
        return 0.5 * (per_frame.mean(dim=1) + per_frame.min(dim=1).values)
    raise ValueError(f"aggregation {how!r} is not one of {AGGREGATIONS}")


def check_aggregation(how: str) -> None:
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation={how!r} is not one of {AGGREGATIONS}")


def torchvision_state(published: Any, weights: str, key: str, hint: str = "") -> dict[str, torch.Tensor]:
    """A torchvision model's state dict from `weights`: "default" or the name of a published set
    (`published`, a torchvision WeightsEnum member) reads the torch hub cache, else downloads,
    and offline without the file raises an error naming it and where to put it; anything else is
    a local state-dict file. `key` names the setting in errors; `hint` ends the offline one."""
    if weights not in ("default", published.name):
        path = Path(weights).expanduser()
        if not path.is_file():
            names = [w.name for w in type(published)]
            raise FileNotFoundError(f"{key} {str(path)!r} not found: give a state-dict file (.pth), "
                                    f"'default' or one of {names} for torchvision's published "
                                    "weights, or 'random' (untrained, tests only)")
        return torch.load(path, map_location="cpu", weights_only=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(published.url).name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return published.get_state_dict(progress=False)
    except Exception as error:  # offline: URLError, or a proxy's HTTP error
        raise RuntimeError(f"could not download {key} from {published.url} ({error}). Offline, "
                           f"download that file elsewhere and put it at {cached}, or give its path "
                           f"as {key}{hint}") from error
