"""Contrast: per-frame standard deviation of Rec. 601 luma, averaged over frames. Weight-free."""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames, luma, safe_sqrt


class Contrast:
    """Reward in [0, 0.5]: 0 for a flat video, 0.5 for frames half black and half white."""

    differentiable = True

    def __init__(self, frames: str | int = "all", eps: float = 1e-12) -> None:
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.eps = eps  # keeps the gradient of the std finite on a flat frame

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        # float32: eps underflows to 0 in float16, bringing back the NaN gradient.
        y = luma(frames.float()).flatten(2)  # (B, T, H*W)
        # Not torch.std: its gradient is NaN on a flat frame, which is where a gray video starts.
        var = (y - y.mean(dim=2, keepdim=True)).square().mean(dim=2)
        rewards = safe_sqrt(var, self.eps).mean(dim=1)
        return rewards.to(frames.dtype), {"contrast_mean": rewards.detach().mean()}
