"""LAION aesthetic score: the improved aesthetic predictor (an MLP on CLIP ViT-L/14 image
embeddings, trained on SAC + LAION-Logos + AVA ratings, scores roughly 1..10), per frame,
aggregated over frames. VADER's and DDPO's aesthetic reward.

https://github.com/christophschuhmann/improved-aesthetic-predictor. The head file
`sac+logos+ava1-l14-linearMSE.pth` is a state dict with keys `layers.{0,2,4,6,7}.{weight,bias}`
(Linear 768-1024, Dropout, Linear 1024-128, Dropout, Linear 128-64, Dropout, Linear 64-16,
Linear 16-1). It is found as `head_file` inside `head_repo`: a hub repository
(`camenduru/improved-aesthetic-predictor`, the default, mirrors the GitHub file) or a local
folder. `trl-lib/ddpo-aesthetic-predictor` with `head_file=aesthetic-model.pth` holds the same
weights under the same keys.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backbones.loading import Source, fetch_file
from rewards import check_frames
from rewards.clip_hf import image_features, load_clip, normalize
from rewards.common import aggregate, check_aggregation, check_resize

HEAD_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))


class AestheticMLP(nn.Module):
    """The predictor's head, with the published module names (so its state dict loads as is)."""

    def __init__(self, width: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def load_head(head_repo: str, head_file: str, width: int) -> AestheticMLP:
    """The head in `head_file` of `head_repo` (hub id or folder), checked against the published
    key layout and the CLIP embedding width `width`."""
    source = Source("reward_fn.head_repo", head_repo, head_file, weights=False)
    path = fetch_file(source)
    where = f"reward_fn.head_repo={head_repo!r}, head_file={head_file!r}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many classes
        raise ValueError(f"{where}: not a torch state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or set(state) != set(HEAD_KEYS):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{where}: not an improved-aesthetic-predictor head; expected exactly the keys "
            f"{list(HEAD_KEYS)} (the layout of sac+logos+ava1-l14-linearMSE.pth), got {got}")
    if state["layers.0.weight"].shape[1] != width:
        raise ValueError(f"{where}: the head takes {state['layers.0.weight'].shape[1]}-wide "
                         f"embeddings but the CLIP model gives {width}-wide ones (the head for "
                         "sac+logos+ava1-l14-linearMSE.pth needs CLIP ViT-L/14)")
    head = AestheticMLP(width)
    head.load_state_dict(state)
    return head.requires_grad_(False).eval()


_HEADS: dict[tuple[str, str, int], AestheticMLP] = {}


class Aesthetic:
    """LAION aesthetic predictor on L2-normalised CLIP image embeddings, per frame; aggregated
    over frames with `aggregation`. The head runs in float32 whatever `dtype` the CLIP is."""

    differentiable = True

    def __init__(self, pretrained: str = "openai/clip-vit-large-patch14",
                 head_repo: str = "camenduru/improved-aesthetic-predictor",
                 head_file: str = "sac+logos+ava1-l14-linearMSE.pth",
                 frames: str | int = "all", aggregation: str = "mean",
                 dtype: str = "fp32", resize: str = "crop") -> None:
        check_aggregation(aggregation)
        check_resize(resize)
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.aggregation, self.resize = aggregation, resize
        self.clip = load_clip(pretrained, None, dtype, "reward_fn.pretrained", "reward_fn.pretrained")
        width = self.clip.model.config.projection_dim
        key = (head_repo, head_file, width)
        if key not in _HEADS:
            _HEADS[key] = load_head(head_repo, head_file, width)
        self.head = _HEADS[key]

    def per_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> aesthetic scores (B, T), float32."""
        embeddings = normalize(image_features(self.clip, frames, self.resize))
        self.head.to(embeddings.device)
        # float32 even under the trainer's fp16/bf16 autocast: the head is tiny, and the score's
        # last digits are what the gradient follows.
        with torch.autocast(embeddings.device.type, enabled=False):
            scores = self.head(embeddings.float())
        return scores.view(frames.shape[0], frames.shape[1])

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        scores = self.per_frame(frames)
        rewards = aggregate(scores, self.aggregation)
        return rewards, {"aesthetic_mean": scores.detach().mean(),
                         "aesthetic_min_frame": scores.detach().min()}
