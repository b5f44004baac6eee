"""The two interfaces everything else is written against.

A backbone is whatever turns prompts and noise into video latents and latents into frames; a
reward scores frames. The sampler and trainers only ever see these operations, never a `unet`
or a `vae`, so ModelScope, AnimateDiff and later DiT models plug in behind the same code.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """A text-to-video diffusion model seen as a few operations.

    Latents are `(B, C, T, h, w)`; decoded frames are `(B, T, C, H, W)` in [0, 1].
    """

    name: str
    prediction_type: str  # "epsilon" or "v_prediction": what `predict` returns
    # True when `predict` checkpoints the denoiser's blocks itself; the sampler then does not
    # checkpoint whole steps (a backbone without the attribute counts as False).
    checkpoint_blocks: bool

    def check_video(self, num_frames: int, height: int, width: int) -> None:
        """Raise ValueError, saying what sizes would work, if the model cannot make this video."""

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of the initial noise for a video of this size."""

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning for `predict`; never differentiated."""

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation. `model` is the trainable module as the caller wrapped it
        (DDP under accelerate), so gradients are synchronised across processes."""

    def decode(self, latents: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Frames `(B, T', C, H, W)` in [0, 1], differentiable; only `frame_index` frames."""

    def make_scheduler(self) -> Any:
        """A fresh diffusers scheduler (schedulers hold per-sampling state)."""

    def trainable_module(self) -> nn.Module:
        """The module holding the LoRA layers: what the trainer hands to accelerate."""

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights with diffusers/peft key names (`unet.` prefix)."""

    def lora_metadata(self) -> dict[str, Any]:
        """The LoRA configuration in diffusers' packed form (`unet.r`, `unet.lora_alpha`, ...),
        stored beside the weights so diffusers' `load_lora_weights` rebuilds the same adapter."""

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of `lora_state_dict`; raises if keys do not match."""

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        """Every non-LoRA weight, to prove training left them untouched."""


@runtime_checkable
class Reward(Protocol):
    """Scores videos. `frames` says which frames it needs decoded: "all", "random" (one random
    frame per video) or an int n (every n-th frame). A differentiable reward lets gradients flow
    from the score back to the frames. A reward that picks frames itself (a composite) sets
    `picks_frames` and takes `rngs`, one generator per video (vader.frames.score). A reward
    that reads something from each prompt (a class name) may offer `check_prompts(prompts)`,
    raising one ValueError that lists every prompt it cannot use; the trainer calls it on all
    its prompts when it is built.

    Optional: a reward that scores only some of the frames it is given has a method
    `scored_frames(n) -> LongTensor`, the sorted indices of those frames out of n, such that
    calling it on just them gives the same score; the trainer then decodes only those
    (`vader.frames.frames_to_decode`). It is not a member here, so rewards without it still
    satisfy the protocol."""

    frames: str | int
    differentiable: bool

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        """frames `(B, T, C, H, W)` in [0, 1] -> rewards `(B,)` and an info dict. Its numbers
        are detached one-element tensors (Python floats are accepted): turning them into floats
        would make the host wait for the device in every step; the trainer reduces them with
        its other per-step numbers instead. Entries of other kinds are not logged."""


def info_numbers(info: dict[str, Any]) -> dict[str, Any]:
    """The entries of a reward's info that are logged: numbers and one-element tensors."""
    return {k: v for k, v in info.items()
            if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
