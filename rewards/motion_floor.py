"""The motion floor: the guard against the hack a consistency reward invites.

A reward that a frozen or near-frozen video maximises (t_lpips, structure_constancy,
flow_smoothness, identity_lock, seam, loop_break: they declare `maximised_by_still_video`) is won
most cheaply by stopping the video. Training on one wraps it in this guard (vader/build.py, the
`motion_guard` settings), which leaves the reward alone while the video moves and charges for
motion lost below a floor set by the base model:

    value = reward − weight × relu((1 − margin) × reference − motion) / reference

`motion` is a per-video measure, `reference` the base model's mean of it over a few of its
videos of training prompts, measured before the first step (`calibrate`, called by the trainer)
and kept in the checkpoint, or given as a number. With the defaults (margin 0.3, weight 1) a
video that keeps 70% of the base model's motion pays nothing and a frozen one pays 0.7, more
than any of the consistency rewards above can gain by freezing (each spans at most 1).

Measures:
- `frame_difference`: the mean absolute change between consecutive frames, the evaluation's
  `motion` column (vader.evaluation.stats.motion), so the guard and the evaluation's hacking flag
  measure the same thing. Differentiable: under reward gradients it pushes motion back up.
- `flow`: the mean optical-flow magnitude (rewards/flow.py, shared with the reward's own flow).
  Unlike a frame difference it does not count flicker as motion, but it carries no gradient, so
  only GRPO (or evaluation) can use it.
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.flow import flow_estimator, pair_flows
from vader.evaluation.stats import motion

MEASURES = ("frame_difference", "flow")


def maximised_by_still_video(reward: Any) -> bool:
    return bool(getattr(reward, "maximised_by_still_video", False))


class MotionFloor:
    """`reward` with the motion floor. Passes through what the trainer asks of the reward it
    wraps (which frames, prompt checks, a composite's own loss and frame picks)."""

    def __init__(self, reward: Any, margin: float = 0.3, weight: float = 1.0,
                 measure: str = "frame_difference", reference: float | None = None,
                 reference_videos: int = 4, flow: str = "farneback", flow_weights: str = "default",
                 num_flow_updates: int = 12) -> None:
        problems = {
            "margin": (0 <= margin < 1, f"{margin}: the share of the base model's motion that may "
                       "be lost for free, in [0, 1)"),
            "weight": (weight > 0, f"{weight}: use a positive weight (or motion_guard.enabled=false)"),
            "measure": (measure in MEASURES, f"{measure!r}: use one of {MEASURES}"),
            "reference": (reference is None or reference > 0, f"{reference}: the base model's motion "
                          "is positive; use null to measure it"),
            "reference_videos": (reference_videos >= 1, f"{reference_videos}: use 1 or more"),
        }
        for key, (ok, why) in problems.items():
            if not ok:
                raise ValueError(f"motion_guard.{key}={why}")
        if reward.frames == "random":
            raise ValueError(f"the motion guard measures motion between frames, but "
                             f"{type(reward).__name__} scores one random frame; set its frames to "
                             "all or n, or motion_guard.enabled=false")
        self.unguarded, self.margin, self.weight, self.measure = reward, margin, weight, measure
        self.reference, self.reference_videos = reference, reference_videos
        self.frames = reward.frames
        # A flow estimator is cached per settings (rewards/flow.py), so this shares the reward's
        # own flow when both use the same one.
        self.estimator = flow_estimator(flow, flow_weights, num_flow_updates) if measure == "flow" else None
        self.differentiable = reward.differentiable and measure == "frame_difference"
        self.picks_frames = getattr(reward, "picks_frames", False)
        for name in ("scored_frames", "check_prompts"):
            if hasattr(reward, name):
                setattr(self, name, getattr(reward, name))
        if hasattr(reward, "loss"):
            self.loss = self._loss

    @property
    def why_not_differentiable(self) -> str:
        if self.measure == "flow":
            return ("motion_guard.measure=flow carries no gradient; use "
                    "motion_guard.measure=frame_difference with reward gradients")
        return f"{type(self.unguarded).__name__} is not differentiable"

    def motion(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,) motion of frames (B, T, C, H, W) by this guard's measure."""
        if frames.shape[1] < 2:
            raise ValueError("the motion guard needs at least 2 frames per video")
        if self.measure == "flow":
            return pair_flows(frames, self.estimator).forward.norm(dim=-3).flatten(1).mean(1)
        return motion(frames)  # the evaluation's own measure, so the two cannot drift apart

    def calibrate(self, frames: torch.Tensor, prompts: list[str]) -> None:
        """Set the reference from the base model's videos of training prompts, as the trainer
        decoded them for this reward; a reference given in the config is kept."""
        if self.reference is None:
            with torch.no_grad():
                self.reference = float(self.motion(frames).mean())
            if not self.reference > 0:
                raise ValueError(f"the base model's videos do not move (motion {self.reference}), "
                                 "so there is no motion to keep; set motion_guard.enabled=false")

    def describe(self, name: str) -> str:
        return (f"motion guard on: training on {name} penalises {self.measure} motion below "
                f"{1 - self.margin:.0%} of the base model's {self.reference:.4g} (weight "
                f"{self.weight:g}); motion_guard.enabled=false turns it off")

    # The reference is the base model's: carried across a resume rather than measured again.
    def training_state(self) -> dict[str, float | None]:
        return {"reference": self.reference}

    def load_training_state(self, state: dict[str, float | None]) -> None:
        if state.get("reference") is not None:
            self.reference = float(state["reference"])

    def __call__(self, frames: torch.Tensor, prompts: list[str],
                 rngs: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.reference is None:
            raise RuntimeError("the motion guard has no reference yet: the trainer calls "
                               "calibrate() before training, or set motion_guard.reference")
        check_frames(frames, prompts)
        kwargs = {"rngs": rngs} if self.picks_frames else {}
        value, info = self.unguarded(frames, prompts, **kwargs)
        moved = self.motion(frames)
        shortfall = torch.relu((1 - self.margin) * self.reference - moved) / self.reference
        penalty = self.weight * shortfall
        # Per-video penalty in a dict, which the trainer does not log, for a composite's loss.
        return value - penalty.to(value.dtype), {
            **info, "unguarded": value.detach().float().mean(), "motion": moved.detach().mean(),
            "motion_floor_penalty": penalty.detach().mean(),
            "below_motion_floor": (shortfall > 0).float().mean(), "guard": {"penalty": penalty}}

    def _loss(self, rewards: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        """A composite shapes its own loss per part (rewards/composite.py); the penalty adds to it."""
        return self.unguarded.loss(rewards, info) + info["guard"]["penalty"]
