"""Dynamic degree (VBench, Huang et al., CVPR 2024): does the video move? Rewritten from VBench's
published formula (the `vbench` package pins old transformers and numpy):

- per consecutive frame pair, the flow magnitude's top 5%: the mean of the largest
  int(0.05 H W) magnitudes (at least one pixel here, where VBench would average none);
- threshold = max(1, 8 / fps) × 6 × min(H, W) / 256 pixels;
- a video is dynamic when at least round(4 T / 16) pairs (T frames; Python's round, as VBench)
  exceed the threshold.

`score: vbench` returns VBench's verdict, 1 or 0 per video (the evaluation's dynamic degree is its
mean); `score: magnitude` returns the mean over pairs of top-5% magnitude / threshold, a graded
version (above 1: past VBench's bar) for GRPO and for guards. VBench runs RAFT-large with the
original authors' Chairs + Things weights and 20 refinement iterations: the defaults here are
torchvision's port of those weights (`C_T_V1`) and 20. VBench first subsamples a video to about
8 fps; here `fps` is the rate of the frames as given (use `frames: n` to keep every n-th), and
the flow is measured on the frame, not on RAFT's padded input.

Not differentiable (a count of thresholded flow, and the flow carries no gradients). A still
video scores 0, the minimum: this is the measure the hack of freezing a video lowers.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.flow import check_consecutive, flow_estimator, pair_flows

TOP_SHARE = 0.05     # VBench: the mean of the top 5% of flow magnitudes per pair
BASE_THRESHOLD = 6.0  # pixels at a 256-pixel short side and 8 fps or more
SCORES = ("vbench", "magnitude")


def thresholds(height: int, width: int, fps: float) -> float:
    return max(1.0, 8.0 / fps) * BASE_THRESHOLD * min(height, width) / 256.0


def pairs_needed(num_frames: int) -> int:
    return round(4 * (num_frames / 16.0))


def top_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """(..., 2, H, W) -> (...): the mean of the largest 5% of the flow's magnitudes."""
    magnitude = flow.norm(dim=-3).flatten(-2)
    k = max(1, int(magnitude.shape[-1] * TOP_SHARE))
    return magnitude.topk(k, dim=-1).values.mean(-1)


class DynamicDegree:
    differentiable = False
    maximised_by_still_video = False

    def __init__(self, frames: str | int = "all", flow: str = "raft_large", flow_weights: str = "C_T_V1",
                 num_flow_updates: int = 20, fps: float = 8.0, score: str = "vbench") -> None:
        check_consecutive("dynamic_degree", frames)
        if score not in SCORES:
            raise ValueError(f"dynamic_degree score={score!r}: use one of {SCORES}")
        if fps <= 0:
            raise ValueError(f"dynamic_degree fps={fps}: give the frame rate of the frames scored (> 0)")
        self.frames, self.fps, self.score = frames, fps, score
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        flows = pair_flows(frames, self.estimator)
        per_pair = top_magnitude(flows.forward)                            # (B, T-1)
        threshold = thresholds(*frames.shape[-2:], self.fps)
        dynamic = ((per_pair > threshold).sum(1) >= pairs_needed(frames.shape[1])).to(per_pair.dtype)
        relative = (per_pair / threshold).mean(1)
        rewards = dynamic if self.score == "vbench" else relative
        return rewards.to(frames.dtype), {"dynamic_share": dynamic.mean(),
                                          "flow_top5_over_threshold": relative.mean()}
