"""Which frames a reward sees. Decoding is the memory-hungry part of a reward step, so the
sampler's latents are decoded only for the frames the reward asks for."""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch


def check_frames(spec: str | int, num_frames: int) -> None:
    if spec in ("all", "random"):
        return
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise ValueError(f"reward frames={spec!r}: use 'all', 'random' (one random frame) or a "
                         "positive int n (every n-th frame)")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")


def select_frames(spec: str | int, num_frames: int, rng: random.Random) -> torch.Tensor | None:
    """Frame indices to decode; None means all of them."""
    check_frames(spec, num_frames)
    if spec == "all":
        return None
    if spec == "random":
        return torch.tensor([rng.randrange(num_frames)])
    return torch.arange(0, num_frames, int(spec))


def score(reward: Any, frames: torch.Tensor, prompts: list[str],
          rngs: Sequence[random.Random]) -> tuple[torch.Tensor, dict[str, Any]]:
    """`reward(frames, prompts)`; a reward that picks frames itself (`picks_frames`: a
    composite, rewards/composite.py) also gets `rngs`, one generator per video, so its picks
    come from the caller's (seed, step) or per-video seeds like every other random choice."""
    if getattr(reward, "picks_frames", False):
        return reward(frames, prompts, rngs=rngs)
    return reward(frames, prompts)
