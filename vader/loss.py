"""Loss shaping as VADER uses it: maximise the reward, or pull it to a target value with an L1
distance (VADER's aesthetic/HPS losses), times a gradient scale."""
from __future__ import annotations

import torch


def reward_loss(rewards: torch.Tensor, target: float | None = None,
                grad_scale: float = 1.0) -> torch.Tensor:
    """Per-video loss `(B,)`; the trainer averages it."""
    if target is None:
        return -grad_scale * rewards
    return grad_scale * (rewards - target).abs()
