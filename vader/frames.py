"""Which frames a reward sees. Decoding is the memory-hungry part of a reward step, so the
sampler's latents are decoded only for the frames the reward asks for (its `frames` option),
narrowed to the frames it actually scores when it says which (`scored_frames`)."""
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


def frames_to_decode(reward, num_frames: int, rng: random.Random) -> torch.Tensor | None:
    """Frame indices to decode for `reward` out of a video of `num_frames`; None means all.

    First the reward's `frames` option (`select_frames`); then, for a reward that scores only
    some of the frames it is given (clip_score: `num_frames_scored` spread over the clip; X-CLIP
    and VideoMAE: the model's frame count), only those: its `scored_frames(n)` names them, sorted,
    out of the n it would be given, and it promises the same score and gradients when given just
    those frames."""
    index = select_frames(reward.frames, num_frames, rng)
    scored = getattr(reward, "scored_frames", None)
    if scored is None:
        return index
    given = num_frames if index is None else len(index)
    narrow = scored(given)
    if len(narrow) == given:  # every frame scored: decode what `frames` asks for, as before
        return index
    return narrow if index is None else index[narrow]


def score(reward: Any, frames: torch.Tensor, prompts: list[str],
          rngs: Sequence[random.Random]) -> tuple[torch.Tensor, dict[str, Any]]:
    """`reward(frames, prompts)`; a reward that picks frames itself (`picks_frames`: a
    composite, rewards/composite.py) also gets `rngs`, one generator per video, so its picks
    come from the caller's (seed, step) or per-video seeds like every other random choice."""
    if getattr(reward, "picks_frames", False):
        return reward(frames, prompts, rngs=rngs)
    return reward(frames, prompts)
