"""Video-text similarity with X-CLIP, which embeds the clip as a whole (frames, then a
cross-frame transformer), not frame by frame.

B. Ni et al., "Expanding Language-Image Pretrained Models for General Video Recognition",
ECCV 2022; checkpoint `microsoft/xclip-base-patch32` (8 frames, 224 x 224).
"""
from __future__ import annotations

from typing import Any

import torch

from backbones.loading import Source, check_source, load_part
from rewards import check_frames
from rewards.video_models import (check_frames_option, clip_pixels, clip_scored_frames,
                                  load_cached, read_json, videomae_settings)


class XCLIPScore:
    """Cosine similarity between X-CLIP's video embedding and its (video-conditioned) text
    embedding of the prompt: `logits_per_video[i, i] / logit_scale`, in [-1, 1].

    X-CLIP's position embeddings fix the number of frames (config.vision_config.num_frames, 8 for
    base-patch32): that many frames are taken evenly over the clip (repeated if it is shorter).
    Preprocessing follows the checkpoint's preprocessor_config.json (a VideoMAEImageProcessor:
    shorter side to 224 bilinear, centre crop 224, ImageNet mean/std), differentiably.
    """

    differentiable = True

    def __init__(self, pretrained: str = "microsoft/xclip-base-patch32",
                 frames: str | int = "all", dtype: str = "fp32") -> None:
        from transformers import CLIPTokenizer, XCLIPModel
        check_frames_option(frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        key = "reward_fn.pretrained"
        check_source(Source(key, pretrained, "config.json"))
        tokenizer_source = Source(key, pretrained, "tokenizer_config.json", "", weights=False)
        check_source(tokenizer_source)
        self.settings = videomae_settings(read_json(
            Source(key, pretrained, "preprocessor_config.json", weights=False)))
        self.model = load_cached(XCLIPModel, key, pretrained, dtype)
        self.tokenizer = load_part(CLIPTokenizer, tokenizer_source)
        self.num_frames = self.model.config.vision_config.num_frames

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The frames X-CLIP sees, out of `num_frames` (see vader.protocols.Reward)."""
        return clip_scored_frames(num_frames, self.num_frames)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        pixels = clip_pixels(self.model, frames, self.num_frames, self.settings)
        text = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt",
                              max_length=self.tokenizer.model_max_length).to(frames.device)
        out = self.model(input_ids=text.input_ids, attention_mask=text.attention_mask,
                         pixel_values=pixels)
        # logits_per_video[b, k] = scale * cos(video b, text k as conditioned on video b).
        cosine = out.logits_per_video.float().diagonal() / self.model.logit_scale.float().exp()
        return cosine.to(frames.dtype), {"xclip_cosine_mean": cosine.detach().mean()}
