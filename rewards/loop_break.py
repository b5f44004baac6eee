"""Loop break: penalise a video whose motion repeats, unless its prompt asks for a loop.

Motion per patch over time: the frame is cut into a `patches` × `patches` grid and each patch's
motion at step t is the mean absolute change of its pixels from frame t to t+1 (frame
differences, not optical flow, so the score keeps its gradient). The periodicity of a patch's
series is its largest correlation with itself shifted by a lag of `min_lag` up to half its length
(rounded up): Pearson's r between the series' first L − k and last L − k steps. A clip played
twice gives about 1 at its own length. This is the lagged correlation computed directly (the
series are short), not the FFT's autocorrelation: that one is global, so the single jump where
a looped clip restarts dominates it and hides the repeat (measured on bikes.mp4: 0.09 for a
clip played twice against 0.37 for the clip once; docs/rewards.md). The video's loopiness is
the motion-weighted mean over patches (patches that barely move say nothing), and the reward is
minus it, in [-1, 1], or 0 when the prompt asks for a loop (any of `loop_words`: "loop",
"looping", "repeat", "cycle", ...).

Differentiable. A still video scores 0 (its series are flat), the best: `maximised_by_still_video`.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from rewards import check_frames
from rewards.flow import check_consecutive

LOOP_WORDS = ("loop", "loops", "looping", "looped", "repeat", "repeats", "repeating", "repeated",
              "cycle", "cycles", "cycling", "cyclic")


def asks_for_loop(prompt: str, words: tuple[str, ...] = LOOP_WORDS) -> bool:
    text = prompt.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def lagged_correlation(series: torch.Tensor, lags: range) -> torch.Tensor:
    """(..., L) -> (..., len(lags)): Pearson's r between series[..., :L-k] and series[..., k:] for
    each lag k (0 where either part is flat)."""
    n = series.shape[-1]
    out = []
    for k in lags:
        a, b = series[..., :n - k], series[..., k:]
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        cov = (a * b).mean(-1)
        out.append(cov / (a.square().mean(-1).sqrt() * b.square().mean(-1).sqrt()).clamp(min=1e-8))
    return torch.stack(out, -1)


class LoopBreak:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all", patches: int = 4, min_lag: int = 2,
                 loop_words: list[str] | None = None) -> None:
        check_consecutive("loop_break", frames)
        if patches < 1 or min_lag < 1:
            raise ValueError(f"loop_break: patches ({patches}) and min_lag ({min_lag}) must be at least 1")
        self.frames, self.patches, self.min_lag = frames, patches, min_lag
        self.loop_words = tuple(loop_words) if loop_words is not None else LOOP_WORDS

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        x = frames.float()
        b, t = x.shape[:2]
        steps = t - 1
        if (steps + 1) // 2 < self.min_lag:
            raise ValueError(f"loop_break needs at least {2 * self.min_lag} frames to see a "
                             f"repeat (min_lag={self.min_lag}), got {t}")
        change = (x[:, 1:] - x[:, :-1]).abs().mean(2)             # (B, T-1, H, W)
        motion = F.adaptive_avg_pool2d(change, self.patches).flatten(2).transpose(1, 2)  # (B, P, T-1)
        lags = range(self.min_lag, (steps + 1) // 2 + 1)
        periodicity = lagged_correlation(motion, lags).amax(-1)                        # (B, P)
        weight = motion.mean(-1)
        loopiness = (periodicity * weight).sum(1) / weight.sum(1).clamp(min=1e-8)
        asked = torch.tensor([asks_for_loop(p, self.loop_words) for p in prompts], device=x.device)
        rewards = torch.where(asked, torch.zeros_like(loopiness), -loopiness)
        return rewards.to(frames.dtype), {"loopiness": loopiness.detach().mean(),
                                          "loop_prompts": asked.float().mean()}
