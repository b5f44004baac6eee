"""World judge as a reward: 1 when the exact judge (`vader.world.judge`) finds all four of the
prompt's attributes in the video, else 0. Not differentiable: it is for evaluation (the world
backbone's `eval_rewards`) and for algorithms that need only a score (GRPO); reward gradients use
`rewards.world_alignment`, its soft counterpart."""
from __future__ import annotations

from typing import Any

import torch

from vader.world.grammar import ATTRIBUTES
from vader.world.judge import check_frame_choice, check_prompts, check_videos, judge


class WorldJudge:
    """Reward 1.0 if background, colour, shape and motion are all as the prompt says, else 0.0
    (`score="all"`), or the share of the four that are (`score="attributes"`: a denser signal for
    policy gradients, which learn nothing from a group whose rewards are all 0); info holds the per-attribute accuracy of the batch and, under "per_video", each attribute's
    0/1 per video (the evaluation reports them per video)."""

    differentiable = False

    def __init__(self, frames: str | int = "all", score: str = "all") -> None:
        if score not in ("all", "attributes"):
            raise ValueError(f"reward_fn.score={score!r}: choose all (1 if every attribute is "
                             "right) or attributes (the share of the four that are right)")
        self.score = score
        check_frame_choice(frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward

    def check_prompts(self, prompts: list[str]) -> None:
        """ValueError listing every prompt that is not from the shapes world."""
        check_prompts(prompts)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_videos(frames, prompts)
        verdicts = judge(frames, prompts)
        per_video = {a: verdicts[a].to(frames.device, torch.float32) for a in ATTRIBUTES}
        info: dict[str, Any] = {f"accuracy_{a}": v.mean() for a, v in per_video.items()}
        all_right = verdicts["all"].to(frames.device, torch.float32)
        info["accuracy_all"] = all_right.mean()
        rewards = all_right if self.score == "all" else torch.stack(list(per_video.values())).mean(0)
        info["per_video"] = per_video
        return rewards.to(frames.dtype), info
