"""Temporal flickering (VBench, Huang et al., CVPR 2024): do pixels flicker from frame to frame?
Rewritten from VBench's published formula (the `vbench` package pins old transformers and numpy).
With x_t a frame's pixels in 0..255 (every channel), per video of T frames:

    MAE_t = mean over pixels and channels of |x_{t+1} - x_t|,   t = 0..T-2
    score = (255 - mean_t MAE_t) / 255

1 for a still video (the maximum); a frame pair differing by one grey level everywhere loses 1/255.
VBench's dimension score is the mean of the per-video scores.

VBench scores only videos its static filter (RAFT flow, `vbench static_filter`) judged static, so
that motion does not count as flicker; here whatever video is given is scored, moving or not: on a
moving video this measures motion as much as flicker. VBench reads 8-bit frames from the encoded
file; here the frames are the float frames as decoded, not rounded to 8 bits.

Weight-free. Differentiable (|·| has gradient ±1; 0 where two pixels are equal). A still video
scores 1, the maximum: `maximised_by_still_video` says so, and the trainer's motion guard applies.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.flow import check_consecutive


class TemporalFlickering:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all") -> None:
        check_consecutive("temporal_flickering", frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        if frames.shape[1] < 2:
            raise ValueError("temporal_flickering needs at least 2 frames per video")
        levels = frames * 255.0  # VBench works in 8-bit grey levels
        # Every pair has the same number of pixels, so the mean of per-pair means is one mean.
        mae = (levels[:, 1:] - levels[:, :-1]).abs().flatten(1).mean(1)
        score = (255.0 - mae) / 255.0
        return score, {"temporal_flickering": score.detach().mean(),
                       "frame_mae_255": mae.detach().mean()}
