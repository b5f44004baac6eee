"""Brightness: mean Rec. 601 luma over every pixel and frame. Weight-free, for offline runs."""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames, luma


class Brightness:
    """Reward in [0, 1]: 0 for a black video, 1 for a white one."""

    differentiable = True

    def __init__(self, frames: str | int = "all") -> None:
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        # float32 so a mean over millions of half-precision pixels does not lose digits.
        rewards = luma(frames.float()).mean(dim=(1, 2, 3))
        return rewards.to(frames.dtype), {"brightness_mean": rewards.detach().mean()}
