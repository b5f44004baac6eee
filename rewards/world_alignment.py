"""World alignment: a differentiable score in [0, 1] of how well a video shows its shapes-world
prompt, for reward-gradient training; `vader.world.judge` is its exact, non-differentiable twin.

It measures what the judge measures, made soft: a sigmoid instead of a threshold for the object
mask, mask-weighted means for the object colour, centroid path and area, and a soft IoU with
shape templates (`vader.world.render.coverage`) instead of a bounding-box fill. Each of the four
parts (background, colour, shape, motion) is in [0, 1], and the three about the object are low
when no object is there (an empty frame is not a "still" object of the right colour). The
targets are read from each prompt, so the prompts must be world prompts (`check_prompts`).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from rewards import safe_sqrt
from vader.world.grammar import ATTRIBUTES, BACKGROUNDS, COLOURS, MOTIONS, SHAPES, Scene, parse
from vader.world.judge import (GROW_RATIO, MASK_THRESHOLD, STILL_DISPLACEMENT, check_frame_choice,
                               check_prompts, check_videos, fit_slope)
from vader.world.render import DIRECTIONS, coverage

# Soft object mask sigmoid((distance from the background - MASK_THRESHOLD) / MASK_SOFTNESS): the
# judge's threshold; the softness keeps a pure background pixel at 6e-4, so the background's
# floor adds under a pixel of "object" per 32x32 frame.
MASK_SOFTNESS = 0.04
# Closeness exp(-d^2 / sigma^2) of a colour to its target: backgrounds are 0.78 apart and object
# colours at least 0.60, so a wrong one scores at most 0.001 (background) or 0.05 (colour), while
# the gradient still reaches from one palette colour to the next.
BACKGROUND_SIGMA = 0.3
COLOUR_SIGMA = 0.35
# Presence per frame: sigmoid((object area share - PRESENCE_AREA) / PRESENCE_SOFTNESS); the
# smallest rendered object covers 0.02 of the frame (0.99), an empty frame 0.0006 (0.01).
PRESENCE_AREA = 0.01
PRESENCE_SOFTNESS = 0.002
# Motion: a move must go past the judge's still threshold along its direction (a sigmoid of
# width MOTION_SOFTNESS, 0.99 at the least rendered travel 0.30), drift little across it and
# keep its size; still keeps both; grows passes the judge's area ratio and stays in place.
MOTION_SOFTNESS = 0.03
DRIFT_SIGMA = 0.1      # displacement (share of the frame) that costs a factor e
LOG_AREA_SIGMA = 0.5   # log area change that costs a factor e (growing objects: 1.06 or more)
GROW_SOFTNESS = 0.1    # of the sigmoid on the log area ratio
# Shape: per frame, a template of each shape with the mask's area, at its centroid; the target's
# IoU times its softmax share among the three (IoU / SHAPE_TEMPERATURE): a circle and a square of
# one area overlap by about 0.8, so the IoU alone barely tells them apart.
SHAPE_TEMPERATURE = 0.05
SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area / half-extent^2
CENTROID_BELOW_CENTRE = {"circle": 0.0, "square": 0.0, "triangle": 1 / 3}  # in half-extents
EPS = 1e-6  # in divisions by a mask's mass and the distance's sqrt: finite gradients


class WorldAlignment:
    """Weighted mean of four parts in [0, 1]: background (border pixels near the prompt's
    background), colour (object pixels near the prompt's colour), shape (soft IoU with the
    prompt's shape, against the other shapes) and motion (the soft centroid path and area, as
    the prompt's motion). `info["per_video"]` holds each part per video."""

    differentiable = True

    def __init__(self, frames: str | int = "all", background_weight: float = 1.0,
                 colour_weight: float = 1.0, shape_weight: float = 1.0,
                 motion_weight: float = 1.0) -> None:
        check_frame_choice(frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.weights = {"background": background_weight, "colour": colour_weight,
                        "shape": shape_weight, "motion": motion_weight}
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"reward_fn.*_weight: use non-negative weights, not all 0; got "
                             f"{self.weights}")

    def check_prompts(self, prompts: list[str]) -> None:
        """ValueError listing every prompt that is not from the shapes world."""
        check_prompts(prompts)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_videos(frames, prompts)
        parts = world_parts(frames.float(), [parse(p) for p in prompts])
        total = sum(self.weights.values())
        rewards = sum(w * parts[a] for a, w in self.weights.items()) / total
        info: dict[str, Any] = {f"{a}_mean": parts[a].detach().mean() for a in ATTRIBUTES}
        info["per_video"] = {a: parts[a].detach() for a in ATTRIBUTES}
        return rewards.to(frames.dtype), info


def world_parts(frames: torch.Tensor, wanted: list[Scene]) -> dict[str, torch.Tensor]:
    """The four parts `(B,)` for float frames `(B, T, 3, H, W)` and their scenes."""
    b, t, _, h, w = frames.shape
    dev = frames.device
    bg = torch.tensor([BACKGROUNDS[s.background] for s in wanted], device=dev)[:, None, :, None, None]
    fg = torch.tensor([COLOURS[s.colour] for s in wanted], device=dev)[:, None, :, None, None]
    d2_bg = (frames - bg).square().sum(dim=2)  # (B, T, H, W)
    d2_fg = (frames - fg).square().sum(dim=2)

    # Background: the border ring, where the renderer never puts the object.
    ring = torch.zeros(h, w, dtype=torch.bool, device=dev)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    background = torch.exp(-d2_bg[..., ring] / BACKGROUND_SIGMA ** 2).mean(dim=(1, 2))

    mask = torch.sigmoid((safe_sqrt(d2_bg, EPS) - MASK_THRESHOLD) / MASK_SOFTNESS)
    area = mask.sum(dim=(2, 3))  # (B, T), pixels
    presence = torch.sigmoid((area / (h * w) - PRESENCE_AREA) / PRESENCE_SOFTNESS).mean(dim=1)
    near = torch.exp(-d2_fg / COLOUR_SIGMA ** 2)
    colour = presence * (mask * near).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + EPS)

    xs = torch.arange(w, device=dev, dtype=frames.dtype) + 0.5
    ys = torch.arange(h, device=dev, dtype=frames.dtype) + 0.5
    cx = (mask.sum(dim=2) * xs).sum(dim=2) / (area + EPS)  # (B, T), pixels
    cy = (mask.sum(dim=3) * ys).sum(dim=2) / (area + EPS)
    shape = shape_part(mask, cx, cy, area, [SHAPES.index(s.shape) for s in wanted])

    times = torch.linspace(0, 1, t, device=dev, dtype=frames.dtype)
    dx, dy = fit_slope((cx / w).T, times), fit_slope((cy / h).T, times)  # (B,), frame shares
    log_ratio = fit_slope(torch.log(area + 1).T, times)  # + 1 pixel: finite on an empty frame
    scores = motion_scores(dx, dy, log_ratio)
    table = torch.stack([scores[name] for name in MOTIONS], dim=1)  # (B, 6)
    index = torch.tensor([list(MOTIONS).index(s.motion) for s in wanted], device=dev)
    motion = presence * table.gather(1, index[:, None]).squeeze(1)
    return {"background": background, "colour": colour, "shape": shape, "motion": motion}


def shape_part(mask: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, area: torch.Tensor,
               target: list[int]) -> torch.Tensor:
    """Per video, the mean over frames of IoU(mask, target template) times the target's softmax
    share among the three templates' IoUs."""
    b, t, h, w = mask.shape
    flat = mask.reshape(b * t, h, w)
    # The templates are placed where the mask is, but not differentiated through: at the best
    # placement the IoU is flat in it (and coverage's sqrt has a NaN gradient at a pixel centre);
    # the gradient that matters moves the pixels toward the template.
    x, y, a = cx.detach().reshape(-1), cy.detach().reshape(-1), area.detach().reshape(-1)
    ious = []
    for name in SHAPES:
        size = (a / SHAPE_AREA[name]).sqrt()
        tpl = coverage(name, x, y - CENTROID_BELOW_CENTRE[name] * size, size, h, w)
        inter = (flat * tpl).sum(dim=(1, 2))
        ious.append(inter / (flat.sum(dim=(1, 2)) + tpl.sum(dim=(1, 2)) - inter + EPS))
    iou = torch.stack(ious, dim=1).view(b, t, len(SHAPES))
    index = torch.tensor(target, device=mask.device).view(b, 1, 1).expand(b, t, 1)
    share = torch.softmax(iou / SHAPE_TEMPERATURE, dim=2).gather(2, index)
    return (iou.gather(2, index) * share).squeeze(2).mean(dim=1)


def motion_scores(dx: torch.Tensor, dy: torch.Tensor,
                  log_ratio: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each motion's score `(B,)` of a displacement (shares of the frame, y downwards, as the
    renderer's DIRECTIONS) and a log area ratio over the clip."""
    moved2 = dx.square() + dy.square()
    same_size = torch.exp(-log_ratio.square() / LOG_AREA_SIGMA ** 2)
    in_place = torch.exp(-moved2 / DRIFT_SIGMA ** 2)
    out = {"still": in_place * same_size,
           "grows": torch.sigmoid((log_ratio - math.log(GROW_RATIO)) / GROW_SOFTNESS) * in_place}
    for name in MOTIONS:
        ux, uy = DIRECTIONS[name]
        if ux or uy:
            along, across = dx * ux + dy * uy, dx * uy - dy * ux
            out[name] = (torch.sigmoid((along - STILL_DISPLACEMENT) / MOTION_SOFTNESS)
                         * torch.exp(-across.square() / DRIFT_SIGMA ** 2) * same_size)
    return out
