"""Structure constancy: does each frame keep the structure of the one before, once motion is
accounted for? SSIM between the Sobel edge maps of frame t+1 and of frame t warped onto it by
optical flow, averaged over the pixels the forward-backward check finds visible in both
(rewards/flow.py), then over the frame pairs. In [-1, 1], 1 for a video whose edges move
exactly with the flow. Sobel and SSIM are kornia's (SSIM: Wang et al. 2004, 11-pixel Gaussian
window).

Differentiable in the frames through the warp, Sobel and SSIM; the flow itself is a constant
(computed without gradients). A still video scores 1, the maximum: `maximised_by_still_video`
says so, so that training on it alone can be guarded against freezing the video.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames, luma
from rewards.flow import check_consecutive, flow_estimator, pair_flows, visible_mean, warp_previous


class StructureConstancy:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all", flow: str = "raft_small", flow_weights: str = "default",
                 num_flow_updates: int = 12, window: int = 11) -> None:
        check_consecutive("structure_constancy", frames)
        import kornia  # a dependency of this reward only; imported when it is built
        self.kornia = kornia
        self.frames = frames
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates)
        self.window = window

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        flows = pair_flows(frames, self.estimator)
        x = frames.float()
        b, pairs = x.shape[0], x.shape[1] - 1
        warped = warp_previous(x, flows)                       # (B, T-1, 3, H, W)

        def edges(v: torch.Tensor) -> torch.Tensor:
            return self.kornia.filters.sobel(luma(v).flatten(0, 1).unsqueeze(1))  # (N, 1, H, W)

        ssim = self.kornia.metrics.ssim(edges(x[:, 1:]), edges(warped), self.window, max_val=1.0)
        mask = flows.mask.flatten(0, 1).to(ssim.dtype)
        rewards = visible_mean(ssim, mask).view(b, pairs).mean(1)
        return rewards.to(frames.dtype), {"structure_constancy_mean": rewards.detach().mean(),
                                          "visible_share": flows.mask.mean()}
