"""Every random-number generator seed the library draws noise from, derived in one place.

A seed is a hash of (purpose, seed, index), so the noise of training videos, of evaluation
videos and of DDIM's eta steps can never be the same noise by accident. Adding or multiplying
small integers (the old `seed * 1_000_003 + video`, `val_seed + i`, `video_seed * 1000 + step`)
made the ranges meet: training video 1234 of seed 0 drew the evaluation noise of `val_seed=1234`,
and the eta noise of video 1 was the initial noise of video 1000.
"""
from __future__ import annotations

import hashlib

TRAIN = "train"  # initial noise of training video `index` of the run seeded `seed`
EVAL = "eval"  # initial noise of the evaluation seed `seed` (index 0), for base and tuned alike
ETA = "eta"  # DDIM eta noise of denoising step `index` of the video whose noise seed is `seed`
STEPS = "steps"  # which denoising steps GRPO trains, for training video `index` (+ ":<epoch>")
WINDOW = "window"  # where a training clip's frames start (vader.data.loader)
TIMESTEP = "timestep"  # the noise level and caption dropout of data sample `index` (SFT, DPO)
CALIBRATE = "calibrate"  # base-model video `index` a reward measures itself against (the motion guard)


def generator_seed(purpose: str, seed: int, index: int = 0) -> int:
    """A 63-bit seed for `torch.Generator().manual_seed`, a pure function of its arguments (the
    same on every process, machine and Python run, unlike `hash`). Distinct arguments give
    distinct seeds unless 64-bit BLAKE2b collides (odds about n^2 / 2^64 for n seeds drawn)."""
    digest = hashlib.blake2b(f"{purpose}:{int(seed)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # manual_seed takes a signed 64-bit value
