"""Aesthetic quality (VBench, Huang et al., CVPR 2024): the LAION aesthetic predictor per frame, on
VBench's 0..1 scale. Rewritten from VBench's published code (the `vbench` package pins old
transformers and numpy). With e_t the L2-normalised CLIP ViT-L/14 image embedding of frame t of T:

    score = 1/T · Σ_t head(e_t) / 10

no clamp (VBench has none: a head can stray past 10 or below 0). VBench's dimension score is the
mean of the per-video scores.

The head VBench uses is not the one rewards/aesthetic.py uses: it is LAION's first, linear
predictor `sa_0_4_vit_l_14_linear.pth` (github.com/LAION-AI/aesthetic-predictor; a state dict with
`weight` (1, 768) and `bias` (1,): nn.Linear(768, 1)), not the improved predictor's MLP
(`sac+logos+ava1-l14-linearMSE.pth`). VBench downloads it from GitHub, so `head_repo` defaults to
the folder VBench keeps it in (any folder or hub repository holding it will do). A head file in
the MLP's layout is taken too (loaded by rewards/aesthetic.py: VADER's predictor on VBench's
scale). The CLIP is loaded through rewards/clip_hf.py, so it is shared with the `aesthetic` reward
in one process.

Preprocessing is VBench's `clip_transform(224)`, differentiably: shorter side resized bicubic
without antialiasing, centre crop, CLIP mean and std (rewards/background_consistency.py,
`clip_embeds`), with the sizes read from the checkpoint's preprocessor_config.json. VBench runs
OpenAI's `clip.load("ViT-L/14")` (fp16 on a GPU); here transformers' `openai/clip-vit-large-patch14`
(the same weights) in `dtype`; the head runs in float32 as VBench's does.

Differentiable. A still video is not what it rewards (`maximised_by_still_video` False).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from backbones.loading import Source, fetch_file
from rewards import check_frames
from rewards.aesthetic import load_head
from rewards.background_consistency import clip_embeds
from rewards.clip_hf import load_clip

VBENCH_HEAD_URL = ("https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/"
                   "sa_0_4_vit_l_14_linear.pth")


def load_vbench_head(head_repo: str, head_file: str, width: int) -> nn.Module:
    """The aesthetic head in `head_file` of `head_repo` (folder or hub id), frozen: VBench's linear
    layout (`weight`, `bias`), else the improved predictor's MLP (rewards/aesthetic.py checks it)."""
    where = f"reward_fn.head_repo={head_repo!r}, head_file={head_file!r}"
    try:
        path = fetch_file(Source("reward_fn.head_repo", head_repo, head_file, weights=False))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. VBench's head is {VBENCH_HEAD_URL}: download it into "
                                "that folder (VBench keeps it in ~/.cache/vbench/aesthetic_model/"
                                "emb_reader) or point reward_fn.head_repo at its folder") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many classes
        raise ValueError(f"{where}: not a torch state dict ({type(err).__name__}: {err})") from err
    if not (isinstance(state, dict) and set(state) == {"weight", "bias"}):
        try:
            return load_head(head_repo, head_file, width)
        except ValueError as err:
            raise ValueError(f"{err}; or VBench's linear head: keys ['bias', 'weight'], as in "
                             f"{VBENCH_HEAD_URL}") from err
    if tuple(state["weight"].shape) != (1, width):
        raise ValueError(f"{where}: the linear head's weight is {tuple(state['weight'].shape)}, "
                         f"but the CLIP model gives {width}-wide embeddings: expected (1, {width}) "
                         "(sa_0_4_vit_l_14_linear.pth needs CLIP ViT-L/14)")
    head = nn.Linear(width, 1)
    head.load_state_dict(state)
    return head.requires_grad_(False).eval()


class AestheticQuality:
    differentiable = True
    maximised_by_still_video = False

    def __init__(self, pretrained: str = "openai/clip-vit-large-patch14",
                 head_repo: str = "~/.cache/vbench/aesthetic_model/emb_reader",
                 head_file: str = "sa_0_4_vit_l_14_linear.pth",
                 frames: str | int = "all", dtype: str = "fp32") -> None:
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.clip = load_clip(pretrained, None, dtype, "reward_fn.pretrained", "reward_fn.pretrained")
        self.head = load_vbench_head(head_repo, head_file, self.clip.model.config.projection_dim)

    def per_frame(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> the head's scores (B, T), float32, on the head's 1..10 scale."""
        embeds = clip_embeds(self.clip, frames)
        self.head.to(embeds.device)
        # float32 even under the trainer's fp16/bf16 autocast, as VBench casts the features.
        with torch.autocast(embeds.device.type, enabled=False):
            return self.head(embeds).squeeze(-1)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        score = (self.per_frame(frames) / 10).mean(1)
        return score, {"aesthetic_quality": score.detach().mean()}
