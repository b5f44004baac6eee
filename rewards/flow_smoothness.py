"""Flow smoothness: motion that moves like rigid, steady objects rather than swirls and jumps.
Two penalties on the optical flow between consecutive frames (rewards/flow.py), the reward being
minus their weighted sum (0 is best):

- field: the mean of |curl| + |divergence| of each flow field over the pixels the
  forward-backward check finds visible, from kornia's spatial gradients (Sobel, normalised, so a
  flow's derivative is in pixels per pixel and does not grow with the resolution). A translating
  or still scene has none; warping, swirling content has a lot.
- speed: how unsteady the motion is over time: the mean change of the flow vector from one frame
  pair to the next (its acceleration, compared pixel by pixel, which ignores that content moved a
  few pixels in between), divided by the mean speed plus `min_speed` pixels (so a nearly still
  video does not divide by zero). A steady pan has none; camera shake, whose flow flips
  direction every frame at a steady speed, has about twice its speed.

Not differentiable: the flow is computed without gradients, so the score has none to give back
to the frames. Use it with GRPO and in evaluation; reward gradients can use t_lpips or
structure_constancy, which carry gradients through the warp. A still video scores 0, the best:
`maximised_by_still_video` says so.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.flow import check_consecutive, flow_estimator, pair_flows, visible_mean


class FlowSmoothness:
    differentiable = False
    maximised_by_still_video = True

    def __init__(self, frames: str | int = "all", flow: str = "raft_small", flow_weights: str = "default",
                 num_flow_updates: int = 12, field_weight: float = 1.0, speed_weight: float = 1.0,
                 min_speed: float = 0.1) -> None:
        check_consecutive("flow_smoothness", frames)
        import kornia  # a dependency of this reward only; imported when it is built
        self.kornia = kornia
        self.frames = frames
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates)
        self.field_weight, self.speed_weight, self.min_speed = field_weight, speed_weight, min_speed

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        flows = pair_flows(frames, self.estimator)
        b, pairs = flows.forward.shape[:2]
        flow = flows.forward.flatten(0, 1)                                  # (N, 2, H, W)
        grad = self.kornia.filters.spatial_gradient(flow)                   # (N, 2, 2, H, W): d/dx, d/dy
        du_dx, du_dy, dv_dx, dv_dy = grad[:, 0, 0], grad[:, 0, 1], grad[:, 1, 0], grad[:, 1, 1]
        roughness = ((dv_dx - du_dy).abs() + (du_dx + dv_dy).abs()).unsqueeze(1)
        # The mask belongs to the later frame and this flow to the earlier one; both are per pixel
        # of one image grid, and the mask only drops pixels whose flow is unreliable.
        mask = flows.mask.flatten(0, 1)
        field = visible_mean(roughness, mask).view(b, pairs).mean(1)
        speed = flows.forward.norm(dim=2).flatten(1).mean(1)                # (B,) pixels per frame
        if pairs > 1:
            change = (flows.forward[:, 1:] - flows.forward[:, :-1]).norm(dim=2).flatten(1).mean(1)
        else:  # two frames: one flow, nothing to compare it with
            change = torch.zeros_like(speed)
        unsteady = change / (speed + self.min_speed)
        rewards = -(self.field_weight * field + self.speed_weight * unsteady)
        return rewards.to(frames.dtype), {"flow_field_roughness": field.mean(), "flow_unsteadiness": unsteady.mean(),
                                          "flow_speed": speed.mean()}
