"""Optical flow for the temporal rewards (rewards/flow_smoothness.py, structure_constancy.py, ...):
the flow between consecutive frames, backward warping, and forward-backward occlusion masks.

Two estimators:
- RAFT (Teed & Deng 2020) through torchvision, small or large, with torchvision's published
  weights (`weights: default`, or a set by name such as C_T_V1, from the torch hub cache or
  downloaded), a local state-dict file,
  or `random` (untrained: for tests of the code path and for timing only; its flow means nothing).
- Farneback (2003) through OpenCV: weight-free, CPU, never differentiable; real flow offline, which
  is what the tests on real footage use.

Flow is computed once per set of frames and shared: every reward that asks for the same frames
tensor (unchanged) and the same estimator in a step gets the cached result, so a composite of
several temporal rewards runs the flow network once (`pair_flows`). Conventions: flow[:, 0] is
the horizontal and flow[:, 1] the vertical displacement in pixels; flow(a -> b) at pixel x says
where x's content is in b.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rewards import luma
from rewards.common import torchvision_state

FLOW_METHODS = ("raft_small", "raft_large", "farneback")
# Forward-backward consistency thresholds of Sundaram, Brox & Keutzer (ECCV 2010), as used by
# the video style-transfer and RAFT-warping literature: a pixel is occluded when
# |b + f(x + b)|^2 > ALPHA1 (|b|^2 + |f(x + b)|^2) + ALPHA2.
ALPHA1, ALPHA2 = 0.01, 0.5
MIN_RAFT_SIDE = 128  # torchvision's RAFT: feature maps of 1/8 the size, four pyramid levels


class RAFTFlow:
    """torchvision's RAFT. Frames in [0, 1] are scaled to [-1, 1] (its weights' transform) and
    padded to a multiple of 8 (replicating the border) as RAFT requires; the flow is cropped back."""

    def __init__(self, size: str = "small", weights: str = "default", num_flow_updates: int = 12) -> None:
        from torchvision.models import optical_flow
        if size not in ("small", "large"):
            raise ValueError(f"RAFT size {size!r}: use 'small' or 'large'")
        build = optical_flow.raft_small if size == "small" else optical_flow.raft_large
        enum = optical_flow.Raft_Small_Weights if size == "small" else optical_flow.Raft_Large_Weights
        names = [w.name for w in enum]
        # torchvision's published sets by name (e.g. C_T_V1 for the large model: the original
        # authors' Chairs + Things weights, ported, which VBench's dynamic degree uses).
        published = enum[weights] if weights in names else enum.DEFAULT
        self.model = build(weights=None, progress=False)
        if weights != "random":
            self.model.load_state_dict(torchvision_state(published, weights, "flow_weights",
                                                         "; `flow: farneback` needs no weights"))
        self.model.requires_grad_(False).eval()
        self.num_flow_updates = num_flow_updates
        self.key = ("raft", size, str(weights), num_flow_updates)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        # RAFT's correlation pyramid needs at least 128 pixels a side: smaller frames are upsampled
        # by a whole factor and the flow brought back to their grid and their pixel units.
        scale = max(1, math.ceil(MIN_RAFT_SIDE / min(h, w)))
        if next(self.model.parameters()).device != a.device:
            self.model.to(a.device)  # RAFT follows the frames, as the reward models do
        a, b = (x.float() * 2 - 1 for x in (a, b))
        if scale > 1:
            a, b = (F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False) for x in (a, b))
        big_h, big_w = h * scale, w * scale
        pad = (0, -big_w % 8, 0, -big_h % 8)
        a, b = (F.pad(x, pad, mode="replicate") for x in (a, b))
        flow = self.model(a, b, num_flow_updates=self.num_flow_updates)[-1][..., :big_h, :big_w]
        return F.avg_pool2d(flow, scale) / scale if scale > 1 else flow


class FarnebackFlow:
    """OpenCV's dense Farneback flow on 8-bit luma, with OpenCV's documented example settings
    (pyramid scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2)."""

    def __init__(self, levels: int = 3, winsize: int = 15, iterations: int = 3) -> None:
        try:
            import cv2
        except ImportError as error:
            raise ImportError("flow=farneback needs OpenCV: pip install opencv-python-headless") from error
        self.cv2 = cv2
        self.settings = (0.5, levels, winsize, iterations, 5, 1.2, 0)
        self.key = ("farneback", levels, winsize, iterations)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        def gray(x: torch.Tensor):
            return (luma(x).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        flows = [self.cv2.calcOpticalFlowFarneback(p, q, None, *self.settings)
                 for p, q in zip(gray(a.detach().float()), gray(b.detach().float()))]
        return torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in flows]).to(a.device)


def check_consecutive(name: str, frames: str | int) -> None:
    """The rewards that compare a video's frames with each other need several, in order."""
    if frames == "random":
        raise ValueError(f"{name} compares a video's frames with each other: frames='all' or an "
                         "int n (every n-th frame), not 'random' (one frame)")


_ESTIMATORS: dict[tuple, Callable] = {}


def flow_estimator(method: str = "raft_small", weights: str = "default", num_flow_updates: int = 12) -> Callable:
    """One estimator per (method, weights, iterations) per process: loaded once, shared by
    rewards; RAFT moves to the device of the frames it is given."""
    if method not in FLOW_METHODS:
        raise ValueError(f"flow={method!r}: use one of {FLOW_METHODS}")
    # Farneback has no weights or iterations: rewards that differ only there share one estimator.
    key = ("farneback",) if method == "farneback" else (method, weights, num_flow_updates)
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = (FarnebackFlow() if method == "farneback" else
                            RAFTFlow(method.split("_")[1], weights, num_flow_updates))
    return _ESTIMATORS[key]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(x) = image(x + flow(x)), bilinear, borders repeated. image (N, C, H, W),
    flow (N, 2, H, W) in pixels; differentiable in the image (and in the flow)."""
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=flow.dtype),
                            torch.arange(w, device=image.device, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1   # align_corners=True: -1 and 1 are pixel centres
    y = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([x, y], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def visible(backward: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 1 where a pixel of the later frame is seen in the earlier one, 0 where the
    forward-backward check fails (occluded or unreliable). backward = flow(later -> earlier),
    forward = flow(earlier -> later)."""
    forward_there = warp(forward, backward)
    mismatch = (backward + forward_there).square().sum(1, keepdim=True)
    scale = backward.square().sum(1, keepdim=True) + forward_there.square().sum(1, keepdim=True)
    return (mismatch <= ALPHA1 * scale + ALPHA2).to(backward.dtype)


def visible_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the pixels `mask` keeps, per image: (..., C, H, W) -> (...); an
    image with no visible pixel averages to 0 rather than dividing by zero."""
    return (values * mask).flatten(-3).sum(-1) / mask.flatten(-3).sum(-1).clamp(min=1.0)


@dataclass
class PairFlows:
    """Flows between consecutive frames of a (B, T) batch of videos, without gradients:
    forward[:, t] = flow(t -> t+1), backward[:, t] = flow(t+1 -> t) (both (B, T-1, 2, H, W)),
    mask[:, t] (B, T-1, 1, H, W): 1 where frame t+1's pixel is visible in frame t."""

    forward: torch.Tensor
    backward: torch.Tensor
    mask: torch.Tensor


_LAST: dict[tuple, tuple[weakref.ref, int, PairFlows]] = {}


@torch.no_grad()
def pair_flows(frames: torch.Tensor, estimator: Callable) -> PairFlows:
    """The consecutive-pair flows of `frames` (B, T, 3, H, W) in [0, 1], computed once: a second
    call with the same tensor, unmodified, and the same estimator returns the same result (one
    entry per estimator: the last frames it saw)."""
    if frames.shape[1] < 2:
        raise ValueError(f"flow needs at least 2 frames per video, got {frames.shape[1]}")
    entry = _LAST.get(estimator.key)
    if entry is not None and entry[0]() is frames and entry[1] == frames._version:
        return entry[2]
    b, t = frames.shape[:2]
    earlier = frames[:, :-1].flatten(0, 1).detach()
    later = frames[:, 1:].flatten(0, 1).detach()
    # One batched call for both directions: RAFT's cost is per image pair either way.
    both = estimator(torch.cat([earlier, later]), torch.cat([later, earlier])).float()
    forward, backward = both.chunk(2)
    mask = visible(backward, forward)
    shape = (b, t - 1)
    result = PairFlows(forward.reshape(*shape, *forward.shape[1:]),
                       backward.reshape(*shape, *backward.shape[1:]), mask.reshape(*shape, *mask.shape[1:]))
    _LAST[estimator.key] = (weakref.ref(frames), frames._version, result)
    return result


def warp_previous(frames: torch.Tensor, flows: PairFlows) -> torch.Tensor:
    """(B, T-1, C, H, W): frame t warped onto frame t+1 along the backward flow; differentiable
    in the frames (the flow is a constant)."""
    b, t = frames.shape[:2]
    earlier = frames[:, :-1].flatten(0, 1)
    out = warp(earlier, flows.backward.flatten(0, 1).to(frames.dtype))
    return out.reshape(b, t - 1, *out.shape[1:])
