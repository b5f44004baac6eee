"""Colorfulness of Hasler & Süsstrunk, per frame, averaged over frames. Weight-free.

D. Hasler, S. Süsstrunk, "Measuring colourfulness in natural images", Proc. SPIE 5007 (2003).
On [0, 1] pixels the values are 1/255 of the paper's, which works on 0..255.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames, safe_sqrt


class Colorfulness:
    """sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2) with rg = R - G and
    yb = (R + G) / 2 - B; 0 for any gray video."""

    differentiable = True

    def __init__(self, frames: str | int = "all", eps: float = 1e-12) -> None:
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.eps = eps  # keeps the gradient finite on a gray frame, where both sqrts are at 0

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        # float32: eps underflows to 0 in float16, bringing back the NaN gradient.
        r, g, b = frames.float().flatten(3).unbind(dim=2)  # each (B, T, H*W)
        rg = r - g
        yb = 0.5 * (r + g) - b
        mean_rg, mean_yb = rg.mean(dim=2), yb.mean(dim=2)
        var_rg = (rg - mean_rg.unsqueeze(2)).square().mean(dim=2)
        var_yb = (yb - mean_yb.unsqueeze(2)).square().mean(dim=2)
        per_frame = (safe_sqrt(var_rg + var_yb, self.eps)
                     + 0.3 * safe_sqrt(mean_rg.square() + mean_yb.square(), self.eps))
        rewards = per_frame.mean(dim=1)
        return rewards.to(frames.dtype), {"colorfulness_mean": rewards.detach().mean()}
