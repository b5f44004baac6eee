"""Subject consistency (VBench, Huang et al., CVPR 2024): does the subject look the same all through
the video? Rewritten from VBench's published formula (the `vbench` package pins old transformers
and numpy). With f_t the L2-normalised DINO ViT-B/16 feature of frame t of T:

    score = 1/(T-1) · Σ_{t=1}^{T-1} ( max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t)) ) / 2

each frame compared with the one before (smoothness) and with the first (drift), negative
similarities counted as 0. VBench's dimension score sums these terms over all videos and divides by
the number of frame pairs: the mean of the per-video scores here when every video has T frames.

Features as VBench takes them: facebookresearch's `dino_vitb16`, the final-norm CLS token; here
transformers' `ViTModel` on `facebook/dino-vitb16` (the same weights), `last_hidden_state[:, 0]`,
with DINO's layer-norm epsilon (1e-6; the hub config says 1e-12). Preprocessing is VBench's
`dino_transform(224)`, differentiably: the shorter side resized to 224 (bilinear, no antialiasing,
as torchvision's tensor Resize with antialias=False), no crop, ImageNet mean and std; the position
embeddings are interpolated to the resulting non-square patch grid, as DINO does itself
(transformers interpolates to the grid size, DINO by a scale factor: not bit-identical). The
checkpoint's preprocessor_config.json is not read: facebook/dino-vitb16's says mean = std = 0.5
and a square 224 x 224 resize, neither what DINO was trained with nor what VBench feeds it.

Differentiable (a similarity below 0 passes no gradient, as max(0, ·) has none there). A still
video scores 1, the maximum: `maximised_by_still_video` says so, and the trainer's motion guard
applies. `consistency` and `vbench_pixels` are shared with background_consistency and
aesthetic_quality.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from backbones.loading import Source, check_source
from rewards import check_frames
from rewards.common import channel_constant, flatten_frames
from rewards.flow import check_consecutive
from rewards.video_models import load_cached

DINO_SIZE = 224  # VBench: dino_transform(224), the shorter side
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_LAYER_NORM_EPS = 1e-6  # facebookresearch/dino's ViT; facebook/dino-vitb16's config says 1e-12


def consistency(features: torch.Tensor) -> torch.Tensor:
    """VBench's consistency of unit-length features `(B, T, D)` -> `(B,)`: the mean over frames
    t >= 1 of (max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_0, f_t))) / 2."""
    if features.shape[1] < 2:
        raise ValueError(f"consistency needs at least 2 frames per video, got {features.shape[1]}")
    previous = (features[:, 1:] * features[:, :-1]).sum(-1).clamp(min=0)
    first = (features[:, 1:] * features[:, :1]).sum(-1).clamp(min=0)
    return ((previous + first) / 2).mean(1)


def vbench_pixels(images: torch.Tensor, size: int, crop: int | None, mean: tuple[float, ...],
                  std: tuple[float, ...], mode: str) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> model input as VBench's torchvision transforms make it from a
    float tensor: shorter side to `size` (longer side truncated, no antialiasing: VBench passes
    antialias=False), a centred `crop` square (None: none) starting at round(margin / 2) as
    torchvision's CenterCrop does, then (x - mean) / std. Differentiable."""
    h, w = images.shape[-2:]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (new_h, new_w) != (h, w):  # torchvision returns the image untouched at its own size
        images = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False,
                               antialias=False)
    if crop is not None:
        top, left = int(round((new_h - crop) / 2)), int(round((new_w - crop) / 2))
        images = images[..., top:top + crop, left:left + crop]
    return (images - channel_constant(tuple(mean), images.device, images.dtype)) \
        / channel_constant(tuple(std), images.device, images.dtype)


class SubjectConsistency:
    differentiable = True
    maximised_by_still_video = True

    def __init__(self, pretrained: str = "facebook/dino-vitb16", frames: str | int = "all",
                 dtype: str = "fp32") -> None:
        from transformers import ViTModel  # heavy: imported when the reward is built
        check_consecutive("subject_consistency", frames)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        key = "reward_fn.pretrained"
        check_source(Source(key, pretrained, "config.json"))
        # No pooler: DINO has none (the hub checkpoint's would be random), and VBench takes the CLS token.
        self.model = load_cached(ViTModel, key, pretrained, dtype, add_pooling_layer=False,
                                 layer_norm_eps=DINO_LAYER_NORM_EPS)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D) unit-length float32 CLS features. The model follows
        the images to their device (the trainer moves only the backbone)."""
        weights = next(self.model.parameters())
        if weights.device != images.device:
            self.model.to(images.device)
        pixels = vbench_pixels(images.float(), DINO_SIZE, None, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
        hidden = self.model(pixel_values=pixels.to(weights.dtype), interpolate_pos_encoding=True)
        return F.normalize(hidden.last_hidden_state[:, 0].float(), dim=-1)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        b, t = frames.shape[:2]
        score = consistency(self.embed(flatten_frames(frames)).view(b, t, -1))
        return score.to(frames.dtype), {"subject_consistency": score.detach().mean()}
