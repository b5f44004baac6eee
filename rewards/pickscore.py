"""PickScore (Kirstain et al., "Pick-a-Pic", NeurIPS 2023): a CLIP ViT-H/14 fine-tuned on human
preferences between generated images; score = exp(logit_scale) * cos(image, text), per frame,
aggregated over frames. Typical values for good matches are around 20-23.

The model is `yuvalkirstain/PickScore_v1` (a transformers CLIPModel); its reference code takes
the tokenizer and image processor from `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, hence the
separate `processor` key (https://github.com/yuvalkirstain/PickScore).
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.clip_hf import frame_text_cosine, load_clip
from rewards.common import aggregate, check_aggregation


class PickScore:
    """exp(logit_scale) * cos(image, text) per frame; aggregated over frames with `aggregation`."""

    differentiable = True

    def __init__(self, pretrained: str = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 frames: str | int = "all", aggregation: str = "mean",
                 dtype: str = "fp32") -> None:
        check_aggregation(aggregation)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.aggregation = aggregation
        self.clip = load_clip(pretrained, processor, dtype, "reward_fn.pretrained",
                              "reward_fn.processor")

    def per_frame(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B, T, 3, H, W) -> PickScores (B, T), float32."""
        scale = self.clip.model.logit_scale.float().exp()
        return scale * frame_text_cosine(self.clip, frames, prompts)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        scores = self.per_frame(frames, prompts)
        rewards = aggregate(scores, self.aggregation)
        return rewards, {"pickscore_mean": scores.detach().mean(),
                         "pickscore_min_frame": scores.detach().min()}
