"""Rendering a scene: a pure function of (prompt, seed) to frames `(T, 3, H, W)` in [0, 1].

Shapes are drawn from signed distance functions (pixels), and each pixel is covered by
clamp(0.5 − distance, 0, 1) of the object: a one-pixel linear ramp across the edge, which is
the anti-aliasing. The seed draws where the object starts, how far and fast it moves and its
size; the prompt fixes what it is and which way it goes. Written here because no maintained
library renders such clips (and the reward reuses `coverage` for its shape templates).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from vader.world.grammar import BACKGROUNDS, COLOURS, Scene, parse

MARGIN = 0.04          # of the frame, between the object and the border at every frame
SIZE = (0.15, 0.22)    # half-extent of the object, as a share of the shorter side
GROW_START = (0.10, 0.13)  # the half-extent a growing object starts at, then multiplied by
GROW_FACTOR = (1.7, 2.0)
DISTANCE = (0.3, 0.45)     # how far a moving object travels over the clip, as a share of the frame
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
              "still": (0, 0), "grows": (0, 0)}


@dataclass(frozen=True)
class Path:
    """Where the object is in each frame: centre (x, y) and half-extent, in pixels."""
    x: torch.Tensor
    y: torch.Tensor
    size: torch.Tensor


def draw_path(scene: Scene, seed: int, num_frames: int, height: int, width: int) -> Path:
    # The prompt enters the seed too, so two prompts rendered with one seed still differ.
    rng = np.random.default_rng([seed, zlib.crc32(scene.prompt.encode())])
    side = min(height, width)
    if scene.motion == "grows":
        r0 = rng.uniform(*GROW_START)
        r1 = r0 * rng.uniform(*GROW_FACTOR)
    else:
        r0 = r1 = rng.uniform(*SIZE)
    dx, dy = DIRECTIONS[scene.motion]
    travel = rng.uniform(*DISTANCE) if (dx or dy) else 0.0
    extent = max(r0, r1) * side + MARGIN * side
    starts = []
    for length, d in ((width, dx), (height, dy)):
        # The whole path stays inside [extent, length − extent].
        lo, hi = extent - min(d, 0) * travel * length, length - extent - max(d, 0) * travel * length
        starts.append(rng.uniform(lo, hi))
    s = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    return Path(x=starts[0] + s * dx * travel * width, y=starts[1] + s * dy * travel * height,
                size=(r0 + s * (r1 - r0)) * side)


def signed_distance(shape: str, px: torch.Tensor, py: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Distance in pixels from the shape's edge (negative inside) at offsets (px, py) from its
    centre; `size` is the half-extent (the circle's radius, half the square's side, the
    triangle's half-height and half-base). Broadcasts."""
    if shape == "circle":  # + 1e-12: a finite gradient at the centre itself (sqrt's is infinite)
        return torch.sqrt(px ** 2 + py ** 2 + 1e-12) - size
    if shape == "square":
        return torch.maximum(px.abs(), py.abs()) - size
    if shape == "triangle":  # apex up at (0, −size), base from (−size, size) to (size, size)
        return torch.maximum(py - size, (2 * px.abs() - py - size) / 5 ** 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, x: torch.Tensor, y: torch.Tensor, size: torch.Tensor, height: int,
             width: int) -> torch.Tensor:
    """`(T, H, W)` share of each pixel the shape covers, the shape centred at (x[t], y[t]) with
    half-extent size[t] (pixels; tensors of length T, differentiable)."""
    ys = torch.arange(height, dtype=x.dtype, device=x.device) + 0.5
    xs = torch.arange(width, dtype=x.dtype, device=x.device) + 0.5
    px = xs[None, None, :] - x[:, None, None]
    py = ys[None, :, None] - y[:, None, None]
    return (0.5 - signed_distance(shape, px, py, size[:, None, None])).clamp(0, 1)


def render(prompt: str | Scene, seed: int, num_frames: int = 8, height: int = 32,
           width: int = 32) -> torch.Tensor:
    """Frames `(T, 3, H, W)` float32 in [0, 1] of the scene; the same arguments give the same
    bytes."""
    scene = parse(prompt) if isinstance(prompt, str) else prompt
    path = draw_path(scene, seed, num_frames, height, width)
    cover = coverage(scene.shape, path.x, path.y, path.size, height, width)[:, None]
    bg = torch.tensor(BACKGROUNDS[scene.background], dtype=torch.float64)[None, :, None, None]
    fg = torch.tensor(COLOURS[scene.colour], dtype=torch.float64)[None, :, None, None]
    return (bg * (1 - cover) + fg * cover).float()


def render_batch(prompts: list[str], seeds: list[int], num_frames: int = 8, height: int = 32,
                 width: int = 32) -> torch.Tensor:
    """`(B, T, 3, H, W)`: `render` of each (prompt, seed)."""
    return torch.stack([render(p, s, num_frames, height, width) for p, s in zip(prompts, seeds)])
