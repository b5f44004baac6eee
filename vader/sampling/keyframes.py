"""Keyframe-then-inbetween generation (issue 18): a long video in two passes of the one sampler
(vader.sampling.differentiable.sample, `keyframes=`).

1. Keyframes: every `interval`-th latent frame (and the last, so every in-between frame has a
   keyframe on each side) sampled on its own as a short video, at the keyframe guidance, from the
   long noise's frames at those positions. No gradients: it sets the frame the second pass keeps.
2. In-betweens: the whole latent video sampled at the lower in-between guidance, in windows when
   `long.window` is set, and at every step the keyframes' positions replaced by the keyframe
   latents noised to that step's level (`scheduler.add_noise`, with the pass's own initial noise
   at those positions): RePaint's way of inpainting with an unconditional model (Lugmayr et al.
   2022), applied along time. After the last step the keyframe latents are put back exactly, so
   the result holds them unchanged (decoded, up to the VAE: a VAE that decodes frame by frame gives
   the same pixels). Gradients flow through the in-between pass's last K steps as in the one-pass
   sampler; the keyframe frames are constants of it.

A keyframe interval counts latent frames, like windows. Guidance: keyframes at
`long.keyframe_guidance` (null: the video's `guidance_scale`), the in-betweens at
`long.inbetween_guidance` (3 by default, the issue's example: the frames between are held by
their keyframes; how much guidance they need is untested on real weights). RePaint's resampling (jumping back and re-denoising several
times per step) is not done: one pass, as Gen-L-Video's and the video-inpainting samplers' cheaper
variant.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vader.sampling.windows import TIME_AXIS


@dataclass(frozen=True)
class Keyframes:
    """Keyframes every `interval` latent frames at `guidance_scale` (None: the video's), the frames
    between at `inbetween_guidance_scale`."""

    interval: int
    guidance_scale: float | None = None
    inbetween_guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.interval < 2:
            raise ValueError(f"long.keyframe_interval={self.interval}: every frame would be a "
                             "keyframe, leaving nothing in between; use 2 or more (or null)")

    def indices(self, length: int) -> list[int]:
        """The keyframes' latent frames in a video of `length`: 0, interval, 2 × interval, ...,
        and the last frame."""
        if length < 3:
            raise ValueError(f"keyframes need a video of at least 3 latent frames, got {length}")
        index = list(range(0, length, self.interval))
        return index if index[-1] == length - 1 else [*index, length - 1]


def keyframes_of(long: object) -> Keyframes | None:
    """The `long` settings (vader.config.LongConfig) as Keyframes; None when
    `long.keyframe_interval` is null."""
    interval = getattr(long, "keyframe_interval", None)
    if interval is None:
        return None
    return Keyframes(interval, long.keyframe_guidance, long.inbetween_guidance)


def put(latents: torch.Tensor, index: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """`latents` with its frames at `index` replaced by `frames`, out of place (autograd keeps
    the rest's gradient)."""
    return latents.index_copy(TIME_AXIS, index.to(latents.device), frames.to(latents.dtype))


def renoised(scheduler, keys: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean keyframe latents at the noise level of timestep `t`, in the scheduler's own
    parametrisation (DDIM's sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε, Euler's x0 + σ ε)."""
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(keys, noise.to(keys.dtype), t.reshape(1))
    return scheduler.scale_noise(keys, t.reshape(1), noise.to(keys.dtype))  # flow matching
