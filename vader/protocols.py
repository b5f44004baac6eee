"""The three interfaces everything else is written against.

A backbone is whatever turns prompts and noise into video latents and latents into frames; a
reward scores frames; an algorithm turns a training step into losses. The samplers and the
training loop only ever see these operations, never a `unet` or a `vae`, so ModelScope,
AnimateDiff and later DiT models plug in behind the same code, and the loop never sees how an
algorithm makes its losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """A text-to-video diffusion model seen as a few operations.

    Latents are `(B, C, T, h, w)`; decoded frames are `(B, T, C, H, W)` in [0, 1].

    Optional, not members (looked for where used): `conditioning = "image"` for a backbone
    conditioned on a first frame (prompts are then vader.data.image_prompts.ImagePrompt, and the
    data stream hands each training sample's image); `training_timestep(generator)`, the draw of
    one training timestep where it is not uniform over the schedule (SVD's EDM noise levels);
    `guidance_weights(scale, like)`, guidance that varies over the latents (SVD's frame ramp).
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

    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents of frames `(B, T, C, H, W)` in [0, 1], as `decode` takes them (the inverse of
        `decode`); never differentiated. For training on data (SFT, DPO)."""

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean latents noised to timestep `t` (one per video) by the forward process the
        denoiser was trained on."""

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """What `predict` should return on `add_noise(latents, noise, t)` for this backbone's
        prediction type (the noise for epsilon, the velocity for v)."""

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
    satisfy the protocol.

    Optional too: `maximised_by_still_video`, True for a reward a frozen video scores best
    (training then adds the motion guard, rewards/motion_floor.py). A training-only wrapper (the
    guard) names what it wraps as `unguarded`, which evaluation reports instead; one that must see
    the base model first has `reference` (None until then) and `calibrate(frames, prompts)`, and
    keeps what it learned across a resume with `training_state()` / `load_training_state()`."""

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


@dataclass
class Run:
    """What the training loop hands an algorithm once the models are on their device: the run's
    settings (`vader.config.TrainConfig`), the built objects, and `model`, the trainable module
    as accelerate wrapped it (DDP under several processes: call it, not the bare module, so
    gradients are averaged across processes)."""

    cfg: Any
    backbone: Backbone
    reward: Reward
    train_prompts: list[str]
    accelerator: Any
    model: nn.Module
    data: list[Any] | None = None  # the dataset's items (vader.data.manifests), if one is set
    run_dir: Any = None            # the run's folder (the latent cache's default home)


@dataclass
class ItemLoss:
    """One micro-batch's result. `loss` is what is backpropagated, already scaled so that the
    gradients summed over a step's micro-batches and averaged over processes are the
    algorithm's objective. `numbers` (detached one-element tensors) are logged as their
    `weight`-weighted mean over micro-batches and processes; every micro-batch of an algorithm
    returns the same keys, and a micro-batch that only keeps a process in step with the others
    (it has nothing of its own to train) returns weight 0."""

    loss: torch.Tensor
    numbers: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: float = 1.0


@dataclass
class Plan:
    """A training step as an algorithm lays it out: `updates` is a list of optimizer updates,
    each a list of micro-batches (anything the algorithm's `loss` takes; the loop never looks
    inside), and `numbers` what the algorithm measured while preparing them (rollout rewards,
    seconds), already the same on every process."""

    updates: list[list[Any]]
    numbers: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Algorithm(Protocol):
    """How a training step makes its losses. The loop (vader.loop.trainer) owns everything
    else: the optimizer, accumulation, clipping, skipping non-finite updates, checkpoints and
    resume, stop signals, evaluation and logging; an algorithm only sees `Run`.

    `progress`: logged numbers the progress bar shows. `data`: what it learns from besides its
    own samples: None, "clips" (captioned videos: `dataset=folder` ...) or "pairs" (preference
    pairs); the build refuses a dataset of the wrong kind, or one given to an algorithm that reads
    none. Every random choice in `plan(step)` derives from the seed and `step`, so a resumed run
    repeats exactly what an uninterrupted one would do.

    Optional, not members (the loop looks for them): `needs_reward_gradient` (the build then
    hands it only a composite reward's parts with gradients), `state_dict()` / `load_state_dict(state)`,
    what the algorithm must carry across a resume (kept in the checkpoint's training state), and
    `report()`, numbers for the run's summary (eval/summary.json, under "training").
    """

    progress: tuple[str, ...]
    data: str | None

    def check(self, cfg: Any, num_processes: int) -> None:
        """Raise ValueError naming the key, for settings this algorithm cannot run; called before
        any model is built."""

    def check_models(self, cfg: Any, backbone: Backbone, reward: Reward) -> None:
        """Raise ValueError saying what to do if this algorithm cannot train this backbone on
        this reward (a reward without gradients, say); called once they are built, before they
        are moved to their device."""

    def setup(self, run: Run) -> None:
        """Keep the built objects; the models are on their device and the LoRA is loaded."""

    def plan(self, step: int) -> Plan:
        """Lay out training step `step` (counted from 0)."""

    def loss(self, item: Any) -> ItemLoss:
        """The loss of one micro-batch; autocast is the loop's."""
