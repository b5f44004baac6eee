"""Action recognition reward: the probability a Kinetics-400 VideoMAE classifier gives the
target action, for the whole clip.

Z. Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised
Video Pre-Training", NeurIPS 2022; checkpoint `MCG-NJU/videomae-base-finetuned-kinetics`
(16 frames, 224 x 224, 400 classes in config.id2label).

Shared helpers (model loading, preprocessing, label matching) live in rewards/video_models.py.
"""
from __future__ import annotations

from typing import Any

import torch

from backbones.loading import Source, check_source
from rewards import check_frames
from rewards.video_models import (check_frames_option, check_prompt_labels, clip_pixels,
                                  clip_scored_frames, find_label, label_in_text, load_cached,
                                  read_json, videomae_settings)


class ActionPrediction:
    """Softmax probability of the target action under a Kinetics VideoMAE classifier.

    The clip is resampled to the model's `num_frames` (16) evenly spaced frames, preprocessed as
    the checkpoint's VideoMAEImageProcessor does (differentiably), and classified once.
    The target is `action` for every video, or with `action=None` the longest Kinetics class
    name found in each video's prompt.
    """

    differentiable = True

    def __init__(self, pretrained: str = "MCG-NJU/videomae-base-finetuned-kinetics",
                 action: str | None = None, frames: str | int = "all",
                 dtype: str = "fp32") -> None:
        from transformers import VideoMAEForVideoClassification
        check_frames_option(frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        check_source(Source("reward_fn.pretrained", pretrained, "config.json"))
        processor = read_json(Source("reward_fn.pretrained", pretrained,
                                     "preprocessor_config.json", weights=False))
        self.settings = videomae_settings(processor)
        self.model = load_cached(VideoMAEForVideoClassification, "reward_fn.pretrained",
                                 pretrained, dtype)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.num_frames = self.model.config.num_frames
        self.target = None if action is None else find_label(action, self.id2label,
                                                             "reward_fn.action")

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The frames the classifier sees, out of `num_frames` (see vader.protocols.Reward)."""
        return clip_scored_frames(num_frames, self.num_frames)

    def _match(self, prompt: str) -> int:
        return label_in_text(prompt, self.id2label, "Kinetics action")

    def check_prompts(self, prompts: list[str]) -> None:
        """ValueError listing every prompt without a Kinetics class (none with `action` set)."""
        if self.target is None:
            check_prompt_labels(prompts, self._match, "Kinetics action", "reward_fn.action")

    def targets(self, prompts: list[str]) -> list[int]:
        if self.target is not None:
            return [self.target] * len(prompts)
        return [self._match(p) for p in prompts]

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        targets = torch.tensor(self.targets(prompts), device=frames.device)
        pixels = clip_pixels(self.model, frames, self.num_frames, self.settings)
        logits = self.model(pixel_values=pixels).logits.float()
        probs = logits.softmax(dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
        return probs.to(frames.dtype), {"actpred_prob_mean": probs.detach().mean()}
