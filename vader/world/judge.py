"""An exact judge of shapes-world videos: which background, colour, shape and motion a video shows.

Training on the shapes world needs a ground truth for "did the model make what the prompt says",
and the renderer's own palette and geometry give one without any learned model. The judge reads
a video with plain measurements (palette distances, a coverage estimate, its centroid, area and
bounding box) and says `None` when it cannot tell, so an off-palette colour, a missing object or
a diagonal drift count as wrong instead of being rounded to the nearest answer. It is not
differentiable; `rewards.world_alignment` is its soft counterpart for reward gradients.

Generated videos are blurrier and noisier than renders, so every step tolerates that: the
background reference is a median of border pixels, speckle outside the largest object is
dropped, the coverage estimate ignores colour noise across the background-to-object direction,
shape is a median over frames, and motion is a least-squares fit over frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rewards import check_frames
from vader.world.grammar import ATTRIBUTES, BACKGROUNDS, COLOURS, PATTERN, parse

# A pixel belongs to the object when it is this far (RGB distance) from the background: half
# the smallest object-to-background separation in the palette (green on gray, 0.59), so a pixel
# at least half covered counts, and noise of std 0.05 per channel (0.09 in norm) does not.
MASK_THRESHOLD = 0.3
# A colour (object or background) is named only within this distance of a palette entry: half
# the smallest separation between palette entries of one kind (blue to cyan 0.60), so the name is
# unambiguous, and an off-palette colour (orange, 0.37 from both red and yellow) reads as None.
PALETTE_TOLERANCE = 0.3
# Object pixels whose distance from the background is at least this share of the brightest ones
# (95th percentile) are fully covered, not anti-aliased edges; their mean is the object colour.
CONFIDENT = 0.85
# Coverage below LOW is background noise (3 std of 0.05-per-channel noise on the smallest
# separation); the remap (c - LOW) / (1 - 2 LOW) keeps a linear edge ramp's integral, so areas
# and extents stay exact on clean renders.
LOW = 0.25
# A frame shows an object when its coverage sums to this share of the frame: a quarter of the
# smallest object the renderer draws (a triangle of half-extent 0.10: 2% of the frame).
MIN_AREA = 0.005
# Each shape's (bounding-box fill, vertical skewness of its coverage): a square fills its box, a
# circle pi/4 of it, a triangle half; the triangle (apex up, mass low) alone is skewed. The judge
# names the nearest, skewness weighted by SKEW_WEIGHT so the triangle stands as far from the
# circle in skewness as in fill (0.28): fill alone confuses blurred triangles (0.62) with circles.
SHAPE_FEATURES = {"triangle": (0.5, -2 ** 0.5 * 2 / 5), "circle": (math.pi / 4, 0.0),
                  "square": (1.0, 0.0)}
SKEW_WEIGHT = 0.5
# The renderer moves objects 0.30 to 0.45 of the frame; below half the least travel is "still".
STILL_DISPLACEMENT = 0.15
# Growing objects end 1.7-2x wider, so their area grows 2.9-4x: "grows" is an area ratio above
# 1.7 (about sqrt 2.9, midway in log between constant and the least growth); shrinking as much
# is no motion of the world, and a moving object must keep its area within these bounds.
GROW_RATIO = 1.7
# A move counts as left/right/up/down when the main axis carries at least this multiple of the
# other axis' drift; a diagonal drift is None.
DOMINANCE = 2.0


@dataclass(frozen=True)
class Reading:
    """What `read` sees in one video; None where it cannot tell. The diagnostics say why:
    `area` per frame (share of the frame), `path` the centroid per frame ((x, y) as shares of
    width and height, y downwards; None in frames without an object), `fill` and `skew` the
    medians over frames of the shape features (SHAPE_FEATURES), `displacement` (dx, dy) over the
    clip and `log_area_ratio` (last vs first frame), both from least-squares fits over the frames
    with an object."""

    background: str | None
    colour: str | None
    shape: str | None
    motion: str | None
    area: tuple[float, ...] = ()
    path: tuple[tuple[float, float] | None, ...] = ()
    fill: float | None = None
    skew: float | None = None
    displacement: tuple[float, float] | None = None
    log_area_ratio: float | None = None

    def get(self, attribute: str) -> str | None:
        return getattr(self, attribute)


def nearest(rgb: torch.Tensor, palette: dict[str, tuple[float, float, float]]) -> str | None:
    """The palette entry within PALETTE_TOLERANCE of `rgb` (3,), or None."""
    names = list(palette)
    dist = (torch.tensor([palette[n] for n in names], dtype=rgb.dtype) - rgb).norm(dim=1)
    i = int(dist.argmin())
    return names[i] if dist[i] <= PALETTE_TOLERANCE else None


def dilate(x: torch.Tensor) -> torch.Tensor:
    """3x3 maximum of each frame of `x` (T, H, W), zero outside. Two 1-D passes of shifted
    maxima: max_pool2d computes the same but was 30x slower on a busy CPU (its threads wait)."""
    p = F.pad(x, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])
    return torch.maximum(torch.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def largest_component(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per frame of `mask` (T, H, W) bool, the 8-connected component with the largest summed
    `weight`. Labels spread by 3x3 maxima (`dilate`) until nothing changes (at most the component's
    longest path), all frames at once: plain torch, no image library needed for this."""
    t, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(t, h, w)
    labels = torch.where(mask, ids, torch.zeros(()))
    while True:
        grown = dilate(labels) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.long().view(t, -1)
    sums = torch.zeros(t, h * w + 1).scatter_add_(1, flat, weight.reshape(t, -1).float())
    sums[:, 0] = -1  # label 0 is the background
    best = sums.argmax(dim=1)
    return (flat == best[:, None]).view(t, h, w) & mask


def fit_slope(values: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of `values` (N, ...) against times `s` (N,) in [0, 1]: the change over
    the whole clip, robust to one bad frame in a way last-minus-first is not."""
    sc = s - s.mean()
    shape = (-1,) + (1,) * (values.ndim - 1)
    return (sc.view(shape) * (values - values.mean(dim=0))).sum(dim=0) / sc.square().sum()


def read(video: torch.Tensor) -> Reading:
    """Read the scene off a video `(T, 3, H, W)` in [0, 1]."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video of shape (T, 3, H, W), got {tuple(video.shape)}")
    v = video.detach().float().cpu().clamp(0, 1)
    t, _, h, w = v.shape
    border = torch.cat([v[..., 0, :], v[..., -1, :], v[..., :, 0], v[..., :, -1]], dim=-1)
    background = nearest(border.transpose(0, 1).reshape(3, -1).median(dim=1).values, BACKGROUNDS)
    # The mask's reference is each frame's own border median, not the palette colour: the same
    # on renders, and it follows a generated background that is tinted or flickers.
    ref = border.median(dim=2).values[:, :, None, None]  # (T, 3, 1, 1)
    dist = (v - ref).square().sum(dim=1).sqrt()  # (T, H, W)
    keep = largest_component(dist > MASK_THRESHOLD, dist)
    if not keep.any():
        return Reading(background, None, None, None, area=(0.0,) * t, path=(None,) * t)

    # Object colour: the mean of its fully covered pixels (observed, so an off-palette colour
    # still gives the geometry below).
    strong = dist[keep]
    confident = keep & (dist >= CONFIDENT * strong.quantile(0.95))
    fg = v.permute(0, 2, 3, 1)[confident].mean(dim=0)  # (3,)
    colour = nearest(fg, COLOURS)

    # Coverage: each pixel's position on the line from the background to the object colour,
    # within one pixel of the kept component (its anti-aliased rim), background noise removed.
    axis = fg[None, :, None, None] - ref
    cover = ((v - ref) * axis).sum(dim=1) / axis.square().sum(dim=1).clamp_min(1e-6)
    cover = ((cover - LOW) / (1 - 2 * LOW)).clamp(0, 1)
    cover = cover * dilate(keep.float())

    area = cover.sum(dim=(1, 2))  # pixels
    present = area >= max(MIN_AREA * h * w, 1.0)
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    safe = area.clamp_min(1e-6)
    cx = (cover.sum(dim=1) * xs).sum(dim=1) / safe / w
    cy = (cover.sum(dim=2) * ys).sum(dim=1) / safe / h
    # Bounding box from the column and row maxima: on an anti-aliased edge they ramp linearly,
    # so their sums are the sub-pixel width and height.
    fills = area / (cover.amax(dim=1).sum(dim=1) * cover.amax(dim=2).sum(dim=1)).clamp_min(1e-6)
    # Vertical skewness of the coverage: a triangle (apex up, mass low) has -0.57, a circle or
    # square 0; blur shrinks it less than it moves the fill.
    dy3 = ys[None, :] - (cy * h)[:, None]
    rows = cover.sum(dim=2)
    var = (rows * dy3.square()).sum(dim=1) / safe
    skews = (rows * dy3 ** 3).sum(dim=1) / safe / var.clamp_min(1e-6) ** 1.5
    path = tuple((float(cx[i]), float(cy[i])) if present[i] else None for i in range(t))
    areas = tuple(float(a) / (h * w) for a in area)

    if not present.any():
        return Reading(background, colour, None, None, area=areas, path=path)
    fill = float(fills[present].median())
    skew = float(skews[present].median())
    shape = min(SHAPE_FEATURES, key=lambda s: math.hypot(
        SHAPE_FEATURES[s][0] - fill, SKEW_WEIGHT * (SHAPE_FEATURES[s][1] - skew)))

    motion = displacement = log_ratio = None
    if int(present.sum()) >= 2:
        s = torch.linspace(0, 1, t)[present]
        dx, dy = (float(fit_slope(c[present], s)) for c in (cx, cy))
        log_ratio = float(fit_slope(area[present].log(), s))
        displacement = (dx, dy)
        motion = classify_motion(dx, dy, log_ratio)
    return Reading(background, colour, shape, motion, area=areas, path=path, fill=fill, skew=skew,
                   displacement=displacement, log_area_ratio=log_ratio)


def classify_motion(dx: float, dy: float, log_area_ratio: float) -> str | None:
    """The motion of a displacement (shares of the frame, y downwards) and an area change; None
    for anything the world has no word for (shrinking, diagonal, growing while moving)."""
    moved = math.hypot(dx, dy) >= STILL_DISPLACEMENT
    if log_area_ratio >= math.log(GROW_RATIO):
        return None if moved else "grows"
    if log_area_ratio <= -math.log(GROW_RATIO):
        return None  # shrinking
    if not moved:
        return "still"
    if abs(dx) >= DOMINANCE * abs(dy):
        return "right" if dx > 0 else "left"
    if abs(dy) >= DOMINANCE * abs(dx):
        return "down" if dy > 0 else "up"  # y grows downwards
    return None


def judge(frames: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """frames `(B, T, 3, H, W)` -> attribute -> bool `(B,)`: whether each video shows what its
    prompt says, for "background", "colour", "shape", "motion", and "all" four. ValueError (with
    the grammar) for a prompt that is not from the shapes world."""
    if frames.ndim != 5 or len(prompts) != frames.shape[0]:
        raise ValueError(f"expected frames (B, T, 3, H, W) and B prompts, got "
                         f"{tuple(frames.shape)} and {len(prompts)} prompts")
    wanted = [parse(p) for p in prompts]  # first, so a bad prompt fails before any reading
    readings = [read(video) for video in frames.detach().float().cpu()]  # one copy, not B
    out = {a: torch.tensor([r.get(a) == s.get(a) for r, s in zip(readings, wanted)],
                           dtype=torch.bool) for a in ATTRIBUTES}
    out["all"] = torch.stack([out[a] for a in ATTRIBUTES]).all(dim=0)
    return out


def check_prompts(prompts: list[str]) -> None:
    """Raise one ValueError listing every prompt that is not from the shapes world (the world
    rewards' `check_prompts`; the trainer calls it on all its prompts before training)."""
    bad = []
    for prompt in dict.fromkeys(prompts):
        try:
            parse(prompt)
        except ValueError:
            bad.append(prompt)
    if bad:
        raise ValueError(f"{len(bad)} of {len(set(prompts))} prompts are not from the shapes world: "
                         f"{bad}. Its prompts read {PATTERN}; use prompt_fn=world, or another reward")


def check_frame_choice(frames: str | int) -> None:
    """The world rewards' `frames` setting: motion needs several frames of each video."""
    if frames == "random":
        raise ValueError("reward_fn.frames=random: the world rewards judge motion, which "
                         "needs at least two frames; use all or n (every n-th)")


def check_videos(frames: torch.Tensor, prompts: list[str]) -> None:
    """`rewards.check_frames`, and at least two frames per video (motion)."""
    check_frames(frames, prompts)
    if frames.shape[1] < 2:
        raise ValueError(f"the world rewards need at least two frames to judge motion, got "
                         f"{frames.shape[1]}")
