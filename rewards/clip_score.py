"""CLIP score: cosine similarity between the prompt's CLIP text embedding and each frame's image
embedding, averaged (or `aggregation`) over `num_frames_scored` frames spread evenly across the
clip, so text alignment is judged on the whole video and not just its opening.

The default model is `openai/clip-vit-large-patch14`, the CLIP most text-to-video evaluations
report CLIP-SIM with, and the same checkpoint the `aesthetic` reward loads (one copy in memory
when both are used in a process). `logit_scale=true` multiplies by the model's learnt
temperature exp(logit_scale) (100 for OpenAI CLIP), the scale of CLIP's logits and of the
"CLIPScore 100 x cos" numbers papers print; false (the default) leaves the raw cosine in [-1, 1].
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.clip_hf import frame_text_cosine, load_clip
from rewards.common import aggregate, check_aggregation


def spread_indices(num_frames: int, n: int | None) -> torch.Tensor:
    """`n` frame indices spread evenly over 0..num_frames-1, first and last included
    (all frames when n is None or >= num_frames)."""
    if n is None or n >= num_frames:
        return torch.arange(num_frames)
    if n == 1:
        return torch.tensor([(num_frames - 1) // 2])
    return torch.linspace(0, num_frames - 1, n).round().long()


class ClipScore:
    """cos(text, frame) per scored frame (times exp(logit_scale) if `logit_scale`), aggregated."""

    differentiable = True

    def __init__(self, pretrained: str = "openai/clip-vit-large-patch14",
                 processor: str | None = None, frames: str | int = "all",
                 num_frames_scored: int | None = 4, aggregation: str = "mean",
                 logit_scale: bool = False, dtype: str = "fp32") -> None:
        check_aggregation(aggregation)
        if num_frames_scored is not None and (isinstance(num_frames_scored, bool)
                                              or not isinstance(num_frames_scored, int)
                                              or num_frames_scored < 1):
            raise ValueError(f"reward_fn.num_frames_scored={num_frames_scored!r}: use a positive "
                             "int (frames spread evenly over the clip) or null (every frame)")
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.num_frames_scored = num_frames_scored
        self.aggregation = aggregation
        self.logit_scale = logit_scale
        self.clip = load_clip(pretrained, processor, dtype, "reward_fn.pretrained",
                              "reward_fn.processor")

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The frames scored out of `num_frames` (see vader.protocols.Reward). Given just those,
        `spread_indices` takes them all: the same score."""
        return spread_indices(num_frames, self.num_frames_scored)

    def per_frame(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, T, 3, H, W) -> similarities (B, T') over the scored frames, float32."""
        index = spread_indices(frames.shape[1], self.num_frames_scored).to(frames.device)
        similarity = frame_text_cosine(self.clip, frames.index_select(1, index), prompts)
        if self.logit_scale:
            similarity = similarity * self.clip.model.logit_scale.float().exp()
        return similarity

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        scores = self.per_frame(frames, prompts)
        rewards = aggregate(scores, self.aggregation)
        return rewards, {"clip_score_mean": scores.detach().mean(),
                         "clip_score_min_frame": scores.detach().min()}
