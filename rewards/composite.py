"""A weighted sum of rewards, each with its own frames and loss shaping, every part logged.

    reward_fn=composite                          # conf/reward_fn/composite.yaml: an example
    value  = sum_i weight_i * r_i                (what is logged as the reward)
    loss   = sum_i weight_i * shape_i(r_i)       shape: -grad_scale * r (target null), or
                                                 grad_scale * |r - target| (VADER's aesthetic loss)

Parts without gradients (dynamic_degree, flow_smoothness, caption_consistency) may join: GRPO
and evaluation score every part, and reward-gradient training keeps only the parts with gradients
(`differentiable_parts`, called by vader/build.py, which says in the log which it left out).
A composite counts as maximised by a still video (so training adds the motion guard,
rewards/motion_floor.py) when such parts hold at least half of its total |weight|.

Decoding is the expensive part of a reward step, so the composite asks the trainer for the
frames its parts ask for when they all agree, and for all frames otherwise; each part then picks
its own frames ("random": one per video; n: every n-th) from what was decoded. A "random" pick
draws from the caller's generators (`rngs`, one per video, see vader.frames.score), never from
state of its own: the trainer's are derived from (seed, step), so a resumed run picks what an
uninterrupted one would, and evaluation's from each video's seed, so base and tuned models are
scored on the same frames.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from rewards import check_frames
from vader.frames import check_frames as check_frame_spec
from vader.algorithms.losses import reward_loss
from vader.protocols import info_numbers


class Composite:
    picks_frames = True  # takes the caller's generators: vader.frames.score passes them

    def __init__(self, parts: dict[str, dict[str, Any]]) -> None:
        if not parts:
            raise ValueError("reward_fn.parts is empty: give at least one part with a `reward`")
        self.parts, self.specs = {}, dict(parts)
        for name, part in dict(parts).items():
            part = dict(part)
            unknown = set(part) - {"reward", "weight", "target", "grad_scale"}
            if "reward" not in part or unknown:
                raise ValueError(f"reward_fn.parts.{name} needs `reward` and may have weight, "
                                 f"target, grad_scale; got {sorted(part)}")
            reward = part["reward"]
            check_frame_spec(reward.frames, 1)
            self.parts[name] = (reward, float(part.get("weight", 1.0)), part.get("target"),
                                float(part.get("grad_scale", 1.0)))
        specs = {reward.frames for reward, *_ in self.parts.values()}
        self.frames = specs.pop() if len(specs) == 1 else "all"
        self.without_gradients = [name for name, (reward, *_) in self.parts.items()
                                  if not reward.differentiable]
        self.differentiable = not self.without_gradients
        total = sum(abs(w) for _, w, *_ in self.parts.values())
        still = sum(abs(w) for r, w, *_ in self.parts.values()
                    if getattr(r, "maximised_by_still_video", False))
        self.maximised_by_still_video = total > 0 and still >= 0.5 * total

    @property
    def why_not_differentiable(self) -> str:
        return f"parts {self.without_gradients} have no gradients"

    def differentiable_parts(self, say=print) -> "Composite":
        """This composite with only its parts that have gradients, for reward-gradient training
        (itself when every part has them, or none does: the algorithm then refuses it)."""
        if self.differentiable or len(self.without_gradients) == len(self.parts):
            return self
        kept = {n: p for n, p in self.specs.items() if n not in self.without_gradients}
        say(f"reward gradients train on the composite's parts with gradients ({', '.join(kept)}); "
            f"left out, having none: {', '.join(self.without_gradients)} (algorithm=grpo uses "
            "every part)")
        return Composite(kept)

    def check_prompts(self, prompts: list[str]) -> None:
        """Each part's own prompt check (rewards that match classes to prompts have one)."""
        for reward, *_ in self.parts.values():
            if hasattr(reward, "check_prompts"):
                reward.check_prompts(prompts)

    def _frames_for(self, spec: str | int, frames: torch.Tensor,
                    rngs: Sequence[random.Random]) -> torch.Tensor:
        if self.frames != "all" or spec == "all":
            return frames
        if spec == "random":  # one frame per video, from that video's generator
            index = torch.tensor([rng.randrange(frames.shape[1]) for rng in rngs],
                                 device=frames.device)
            return frames[torch.arange(len(rngs), device=frames.device), index].unsqueeze(1)
        return frames[:, ::int(spec)]

    def __call__(self, frames: torch.Tensor, prompts: list[str],
                 rngs: Sequence[random.Random] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """`rngs`: one generator per video for parts that pick random frames; None picks as
        random.Random(0) would, the same frames on every call."""
        check_frames(frames, prompts)
        if rngs is None:
            rngs = [random.Random(0) for _ in prompts]
        if len(rngs) != len(prompts):
            raise ValueError(f"expected {len(prompts)} generators (one per video), got {len(rngs)}")
        total, info, values = 0.0, {}, {}
        for name, (reward, weight, _, _) in self.parts.items():
            value, part_info = reward(self._frames_for(reward.frames, frames, rngs), prompts)
            values[name] = value
            total = total + weight * value.float()
            info[name] = value.detach().float().mean()
            info.update({f"{name}/{k}": v for k, v in info_numbers(part_info).items()})
        info["parts"] = values  # (B,) tensors, for `loss`; the trainer logs only the numbers
        return total, info

    def loss(self, rewards: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        """Per-video loss (B,): each part shaped by its own target and grad_scale, weighted."""
        return sum(weight * reward_loss(info["parts"][name].float(), target, grad_scale)
                   for name, (_, weight, target, grad_scale) in self.parts.items())
