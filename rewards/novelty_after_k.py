"""Novelty after k: does the video show something new after its first k frames, without cutting
to unrelated content? Frames are embedded with DINOv2 (the unit-length CLS embedding, loaded and
preprocessed as identity_lock does: rewards/identity_lock.py), then, for one video with
embeddings f_0 .. f_{T-1}:

- novelty = mean over t >= k of (1 - max over s < k of cos(f_t, f_s)): how far each later frame
  is from the closest of the first k (the reference). 0 when everything after k was already
  shown; a later frame identical to any reference frame adds nothing.
- tax = sum over consecutive pairs of relu(tau - cos(f_t, f_t+1)): a cut makes one consecutive
  similarity collapse, continuous change keeps every step above tau. Summed, not averaged, so a
  cut costs the same in a clip of 8 frames as in one of 64 (a mean would divide it by the
  clip's length and a cut would pay off in long clips).
- reward = novelty - tax_weight * tax.

k counts the frames the reward is given (after `frames: n` subsampling); null means half of
them (T // 2, the first half is the reference). The defaults (tau 0.8, tax_weight 2: a cut
between unrelated scenes, whose consecutive similarity falls to about 0.4, costs about 0.8,
more than the novelty of at most 1 - 0.4 that it brings) are our choices, not from a paper,
and not yet measured with the real DINOv2.

Differentiable (through DINOv2 to every frame). A still video has novelty 0 and no tax, so it
scores 0, not the best: `maximised_by_still_video` is False (the reward asks for change).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rewards import check_frames
from rewards.common import flatten_frames
from rewards.flow import check_consecutive
from rewards.identity_lock import dinov2_embed, load_dinov2


def novelty_terms(embedded: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, ...]:
    """embedded (B, T, D) unit-length -> novelty (B,), tax (B,) and the consecutive cosine
    similarities (B, T-1), as the module docstring defines them."""
    later_to_reference = embedded[:, k:] @ embedded[:, :k].transpose(1, 2)   # (B, T-k, k)
    novelty = (1 - later_to_reference.amax(-1)).mean(-1)
    consecutive = (embedded[:, 1:] * embedded[:, :-1]).sum(-1)
    tax = F.relu(tau - consecutive).sum(-1)
    return novelty, tax, consecutive


class NoveltyAfterK:
    differentiable = True
    # A still video has novelty 0: the reward asks for new content, so it is not maximised there.
    maximised_by_still_video = False

    def __init__(self, pretrained: str = "facebook/dinov2-small", frames: str | int = "all",
                 k: int | None = None, tau: float = 0.8, tax_weight: float = 2.0,
                 dtype: str = "fp32") -> None:
        check_consecutive("novelty_after_k", frames)
        if k is not None and k < 1:
            raise ValueError(f"novelty_after_k k={k}: at least 1 reference frame (or null: half the clip)")
        if not -1 <= tau <= 1:
            raise ValueError(f"novelty_after_k tau={tau}: a cosine similarity, in [-1, 1]")
        if tax_weight < 0:
            raise ValueError(f"novelty_after_k tax_weight={tax_weight}: 0 or more")
        self.frames, self.k, self.tau, self.tax_weight = frames, k, tau, tax_weight
        self.model, self.settings = load_dinov2(pretrained, dtype)

    def reference_frames(self, num_frames: int) -> int:
        """k for a video of `num_frames`: as set, or half of them; at least one frame after it."""
        k = self.k if self.k is not None else num_frames // 2
        if not 1 <= k < num_frames:
            raise ValueError(f"novelty_after_k needs frames after the first k={k}: got {num_frames} "
                             "frames (at least 2; set k below the frame count)")
        return k

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) in [0, 1] -> (B, T, D) unit-length DINOv2 CLS embeddings."""
        b, t = frames.shape[:2]
        return dinov2_embed(self.model, self.settings, flatten_frames(frames)).view(b, t, -1)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        k = self.reference_frames(frames.shape[1])
        novelty, tax, consecutive = novelty_terms(self.embed(frames), k, self.tau)
        rewards = novelty - self.tax_weight * tax
        return rewards.to(frames.dtype), {"novelty": novelty.detach().mean(),
                                          "coherence_tax": tax.detach().mean(),
                                          "min_consecutive_similarity": consecutive.detach().amin()}
