"""Seam: are the boundaries between the windows of a long video as smooth as the inside of a
window? A long video made of windows of `window` frames that overlap by `overlap`, laid out as
vader.sampling.windows lays them (window k starts at frame k × (window − overlap), the last one
moved back to end at the last frame), can jump where one window's frames give way to the next:
at both edges of each overlap, the frame pairs (s − 1, s) for s = a window's first frame and
s = the previous window's end (one seam per window when overlap is 0); `seam_frames` names the
frames s instead. A video no longer than one window has no seam: an error, unless
`one_window_scores_one` (the evaluation's seam column of a length curriculum's first stage).
With a VAE that compresses time (`temporal` video frames per latent frame after the first: 4 for
Wan and CogVideoX), windows count latent frames, and a seam at latent frame s is the video pair
(temporal (s − 1), temporal (s − 1) + 1): latent frame s decodes to frames temporal (s − 1) + 1 ..
temporal s. The evaluation's seam column takes `temporal` from the backbone.

For every consecutive pair, the flow-warp error: the mean absolute difference between frame t+1
and frame t warped onto it by optical flow (rewards/flow.py), over the pixels the
forward-backward check finds visible. The score is (mean error inside windows + eps) / (mean
error at the seams + eps), capped at 1: 1 when the seams are as smooth as the rest, falling as
they jump (0.5: twice the inside's error). Only the warp error is used; LPIPS or SSIM at the
seams (which the issue also names) would be other rewards' measures of the same pairs.

Differentiable in the frames through the warp (the flow is a constant) while below the cap.
A still video scores 1.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.flow import flow_estimator, pair_flows, visible_mean, warp_previous


def latent_count(num_frames: int, temporal: int) -> int:
    return (num_frames - 1) // temporal + 1 if temporal > 1 else num_frames


def seam_starts(num_frames: int, window: int, overlap: int, temporal: int = 1) -> list[int]:
    """The frames s where a seam pair (s − 1, s) ends, inside a video of num_frames made in the
    windows of vader.sampling.windows (none when it fits one window), windows counting latent
    frames of `temporal` video frames each (see the module docstring)."""
    from vader.sampling.windows import Windows

    latents = latent_count(num_frames, temporal)
    if latents <= window:
        return []
    spans = Windows(window, overlap, "none").spans(latents)
    starts = {s for (_, prev_end), (start, _) in zip(spans, spans[1:]) for s in (start, prev_end)}
    return sorted(s if temporal == 1 else temporal * (s - 1) + 1 for s in starts if 0 < s < latents)


class Seam:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all", window: int = 16, overlap: int = 4,
                 seam_frames: list[int] | None = None, flow: str = "raft_small",
                 flow_weights: str = "default", num_flow_updates: int = 12, eps: float = 1e-3,
                 one_window_scores_one: bool = False, temporal: int = 1) -> None:
        if frames != "all":
            raise ValueError("seam needs every frame (frames='all'): the seams sit at fixed frames")
        if seam_frames is None and not 0 <= overlap < window:
            raise ValueError(f"seam: overlap ({overlap}) must be at least 0 and less than window ({window})")
        self.frames, self.window, self.overlap, self.eps = frames, window, overlap, eps
        self.one_window_scores_one, self.temporal = one_window_scores_one, temporal
        if temporal < 1:
            raise ValueError(f"seam: temporal={temporal} must be at least 1 (video frames per latent frame)")
        self.seam_frames = None if seam_frames is None else sorted(int(s) for s in seam_frames)
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates)

    def seams(self, num_frames: int) -> list[int]:
        seams = self.seam_frames or seam_starts(num_frames, self.window, self.overlap, self.temporal)
        bad = [s for s in seams if not 0 < s < num_frames]
        if bad or not seams:
            raise ValueError(f"seam: no seam inside a video of {num_frames} frames (seam frames "
                             f"{seams}, window {self.window}, overlap {self.overlap}); score videos "
                             "longer than one window, or give seam_frames between 1 and T - 1")
        if len(seams) == num_frames - 1:
            raise ValueError(f"seam: every frame pair of a {num_frames}-frame video is a seam "
                             f"(window {self.window}, overlap {self.overlap}): nothing to compare with")
        return seams

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        if self.one_window_scores_one and self.seam_frames is None \
                and latent_count(frames.shape[1], self.temporal) <= self.window:
            one = torch.ones(frames.shape[0], dtype=frames.dtype, device=frames.device)
            return one, {"seam": one.mean()}  # nothing joined, nothing to be rough
        seams = self.seams(frames.shape[1])
        flows = pair_flows(frames, self.estimator)
        x = frames.float()
        difference = (warp_previous(x, flows) - x[:, 1:]).abs().mean(2, keepdim=True)   # (B, T-1, 1, H, W)
        error = visible_mean(difference, flows.mask.to(difference.dtype))                # (B, T-1)
        at_seam = torch.zeros(error.shape[1], dtype=torch.bool, device=error.device)
        at_seam[[s - 1 for s in seams]] = True                # pair index t joins frames t and t + 1
        seam_error, inside_error = error[:, at_seam].mean(1), error[:, ~at_seam].mean(1)
        score = ((inside_error + self.eps) / (seam_error + self.eps)).clamp(max=1.0)
        return score.to(frames.dtype), {"seam": score.detach().mean(),
                                        "seam_warp_error": seam_error.detach().mean(),
                                        "inside_warp_error": inside_error.detach().mean()}
