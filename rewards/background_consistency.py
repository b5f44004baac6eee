"""Background consistency (VBench, Huang et al., CVPR 2024): does the scene stay the same? VBench's
subject-consistency formula (rewards/subject_consistency.py, `consistency`) on CLIP image features
instead of DINO's, rewritten from VBench's published code (the `vbench` package pins old
transformers and numpy). With f_t the L2-normalised CLIP ViT-B/32 image embedding of frame t of T:

    score = 1/(T-1) · Σ_{t=1}^{T-1} ( max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t)) ) / 2

VBench's dimension score divides the sum over all videos by the number of frame pairs: the mean of
the per-video scores here when every video has T frames. CLIP's global embedding follows the whole
scene more than DINO's CLS token, hence "background".

Model: VBench's `clip.load("ViT-B/32")` (OpenAI's weights; fp16 on a GPU there), here transformers'
`openai/clip-vit-base-patch32` (the same weights) in `dtype`, its projected image embedding,
loaded through rewards/clip_hf.py (shared with the other CLIP rewards; a whole CLIPModel, because
a vision-only model built from a CLIPModel checkpoint can get its projection's width wrong).
Preprocessing is VBench's `clip_transform(224)`, differentiably (`clip_embeds`): the shorter side
resized bicubic without antialiasing (torchvision's tensor Resize, antialias=False), centre crop,
CLIP mean and std, with size, crop, mean, std and interpolation read from the checkpoint's
preprocessor_config.json (for the OpenAI checkpoints they are VBench's).

Differentiable. A still video scores 1, the maximum (`maximised_by_still_video`).
"""
from __future__ import annotations

from typing import Any

import torch

from rewards import check_frames
from rewards.clip_hf import Clip, _pooled, load_clip, normalize
from rewards.common import flatten_frames
from rewards.flow import check_consecutive
from rewards.subject_consistency import consistency, vbench_pixels


def clip_embeds(clip: Clip, frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B, T, D) unit-length float32 CLIP image embeddings of
    VBench's `clip_transform`; gradients reach `frames`. The model follows the frames' device."""
    clip.to(frames.device)
    s = clip.image
    pixels = vbench_pixels(flatten_frames(frames).float(), s.size, s.crop, s.mean, s.std, s.mode)
    embeds = _pooled(clip.model.get_image_features(pixel_values=pixels.to(clip.dtype)))
    return normalize(embeds.float()).view(frames.shape[0], frames.shape[1], -1)


class BackgroundConsistency:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, pretrained: str = "openai/clip-vit-base-patch32", frames: str | int = "all",
                 dtype: str = "fp32") -> None:
        check_consecutive("background_consistency", frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.clip = load_clip(pretrained, None, dtype, "reward_fn.pretrained", "reward_fn.pretrained")

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        score = consistency(clip_embeds(self.clip, frames))
        return score.to(frames.dtype), {"background_consistency": score.detach().mean()}
