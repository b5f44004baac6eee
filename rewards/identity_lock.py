"""Identity lock: does the video keep showing the same subject? The mean cosine similarity of
DINOv2 embeddings (Oquab et al. 2023, through transformers' `Dinov2Model`: the layer-normed CLS
token, `pooler_output`) over every pair of `keyframes` frames spread evenly over the clip, first
and last included. DINO's CLS token attends to the salient object, so this follows the subject
more than the background, but it embeds the whole frame: a subject that stays while the scene
around it changes completely also loses similarity. Drift = 1 − similarity is logged.

Preprocessing follows the checkpoint's preprocessor_config.json (DINOv2's BitImageProcessor:
shorter side 256 bicubic, centre crop 224, ImageNet mean and std), differentiably. The trainer
decodes only the keyframes (`scored_frames`). A face embedder (MTCNN + InceptionResnetV1 from
facenet-pytorch) for faces, which the issue lists as an option, is not built.

Differentiable. A still video scores 1, the maximum: `maximised_by_still_video` says so.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from backbones.loading import Source, check_source
from rewards import check_frames
from rewards.clip_hf import read_image_settings
from rewards.common import flatten_frames, resize_crop_normalize
from rewards.flow import check_consecutive
from rewards.video_models import clip_scored_frames, load_cached, sample_clip


class IdentityLock:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, pretrained: str = "facebook/dinov2-small", frames: str | int = "all",
                 keyframes: int = 4, dtype: str = "fp32") -> None:
        from transformers import Dinov2Model
        check_consecutive("identity_lock", frames)
        if keyframes < 2:
            raise ValueError(f"identity_lock keyframes={keyframes}: at least 2 to compare")
        self.frames, self.keyframes = frames, keyframes
        key = "reward_fn.pretrained"
        check_source(Source(key, pretrained, "config.json"))
        self.settings = read_image_settings(pretrained, key)
        self.model = load_cached(Dinov2Model, key, pretrained, dtype)

    def scored_frames(self, num_frames: int) -> torch.Tensor:
        """The keyframes, out of `num_frames` (see vader.protocols.Reward)."""
        return clip_scored_frames(num_frames, self.keyframes)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        if frames.shape[1] < 2:
            raise ValueError("identity_lock needs at least 2 frames per video")
        keys = sample_clip(frames, min(self.keyframes, frames.shape[1]))     # (B, K, 3, H, W)
        b, k = keys.shape[:2]
        s = self.settings
        pixels = resize_crop_normalize(flatten_frames(keys).float(), s.size, s.crop, s.mean, s.std, s.mode)
        weights = next(self.model.parameters())
        embedded = self.model(pixel_values=pixels.to(weights.device, weights.dtype)).pooler_output
        embedded = F.normalize(embedded.float(), dim=-1).view(b, k, -1)
        cosine = embedded @ embedded.transpose(1, 2)                          # (B, K, K)
        pairs = torch.triu_indices(k, k, offset=1, device=cosine.device)
        similarity = cosine[:, pairs[0], pairs[1]].mean(1)
        return similarity.to(frames.dtype), {"identity_similarity": similarity.detach().mean(),
                                             "identity_drift": (1 - similarity).detach().mean()}
