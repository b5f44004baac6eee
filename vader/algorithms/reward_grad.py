"""Reward gradients (VADER, DRaFT-K): sample with the differentiable sampler, decode the frames the
reward scores, score them, and backpropagate the reward into the LoRA weights through the last
denoising steps. The default algorithm (`algorithm=reward_grad`).

Its keys stay at the top level of the config, where VADER's users type them: `backprop_mode`,
`backprop_steps`, `backprop_step`, `loss.target`, `loss.grad_scale`, `eta`; one optimizer
update per step, over `gradient_accumulation_steps` micro-batches of `train_batch_size` videos
per process. Every random choice (prompt order, noise, cutoff, frame choice) derives from the
seed and the step, so a resumed run continues exactly, and N processes on a global batch match
one process on the same batch.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any

import torch

from vader.algorithms.losses import reward_loss
from vader.data.order import prompt_at
from vader.frames import frames_to_decode, score
from vader.protocols import Backbone, ItemLoss, Plan, Reward, Run, info_numbers
from vader.sampling.differentiable import (check_backprop, cutoff_index, dead_steps,
                                           sample)
from vader.sampling.seeds import TRAIN, generator_seed
from vader.sampling.keyframes import keyframes_of
from vader.sampling.windows import video_noise, windows_of


class RewardGradient:
    progress = ("loss", "reward")
    data = None  # learns from its own samples
    needs_reward_gradient = True  # the build gives it a composite's parts with gradients only
    long_videos = ("window", "keyframe_interval")  # long.* keys its sampler takes (docs/long_video.md)

    def check(self, cfg: Any, num_processes: int) -> None:
        check_backprop(cfg.backprop_mode, cfg.num_inference_steps, cfg.backprop_steps,
                       cfg.backprop_step)

    def check_models(self, cfg: Any, backbone: Backbone, reward: Reward) -> None:
        if not reward.differentiable:
            why = getattr(reward, "why_not_differentiable", f"{type(reward).__name__} is not "
                          "differentiable")
            raise ValueError(f"reward {why}, so reward-gradient training cannot use it; use "
                             "algorithm=grpo (no reward gradient needed), or evaluate with "
                             "only_val=True")
        if hasattr(reward, "loss") and (cfg.loss.target is not None or cfg.loss.grad_scale != 1):
            raise ValueError(f"{type(reward).__name__} shapes its own loss per part; set target "
                             "and grad_scale in reward_fn.parts.<name> instead of "
                             "loss.target/loss.grad_scale")
        # Kept for forward_loss: the cutoff skips the steps that cannot depend on the model.
        self.dead_steps = dead_steps(backbone.make_scheduler, cfg.num_inference_steps)
        if cfg.backprop_mode == "specific" and \
                set(range(cfg.backprop_step, cfg.num_inference_steps)) <= self.dead_steps:
            raise ValueError(
                f"backprop_step={cfg.backprop_step}: from there on no step of this schedule "
                f"depends on the model output (steps {sorted(self.dead_steps)} end at t=0), so "
                "LoRA would get no gradient; choose an earlier backprop_step")

    def setup(self, run: Run) -> None:
        self.run = run

    # --- data: a pure function of (seed, step, micro-step, rank) ---------------------------
    def batch(self, step: int, micro: int) -> tuple[list[str], list[int]]:
        cfg, acc = self.run.cfg, self.run.accelerator
        per_micro = cfg.train_batch_size * acc.num_processes
        first = (step * cfg.gradient_accumulation_steps + micro) * per_micro
        first += acc.process_index * cfg.train_batch_size
        videos = range(first, first + cfg.train_batch_size)
        return ([prompt_at(self.run.train_prompts, cfg.seed, g) for g in videos],
                [generator_seed(TRAIN, cfg.seed, g) for g in videos])

    def plan(self, step: int) -> Plan:
        micro_steps = []
        for micro in range(self.run.cfg.gradient_accumulation_steps):
            prompts, seeds = self.batch(step, micro)
            micro_steps.append((prompts, seeds, random.Random(f"{self.run.cfg.seed}-{step}-{micro}")))
        return Plan([micro_steps])

    def loss(self, item: tuple[list[str], list[int], random.Random]) -> ItemLoss:
        loss, values, info = self.forward_loss(*item)
        numbers = {"loss": loss.detach(), "reward": values.detach().float().mean(),
                   **{f"reward_info/{k}": v for k, v in info_numbers(info).items()}}
        return ItemLoss(loss / self.run.cfg.gradient_accumulation_steps, numbers)

    def forward_loss(self, prompts: list[str], seeds: list[int],
                     rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One micro-step up to the loss: noise from the seeds, the truncated sampler, decode of
        the frames the reward scores, reward, loss. Autocast is the caller's; tests call this to
        compare the gradients of each speed/memory switch on and off."""
        run, cfg = self.run, self.run.cfg
        windows = windows_of(cfg.long)
        noise = video_noise(run.backbone.latent_shape(len(prompts), cfg.num_frames, cfg.height,
                                                      cfg.width), seeds, windows, run.accelerator.device)
        cutoff = cutoff_index(cfg.backprop_mode, cfg.num_inference_steps, cfg.backprop_steps,
                              cfg.backprop_step, rng, self.dead_steps)
        # Offloading moves what autograd saves for backward to host memory (pinned, on a GPU);
        # inside checkpointed regions checkpoint's own hooks win, so it matters most without.
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
                   if cfg.offload_activations else contextlib.nullcontext())
        with offload:
            latents = sample(run.backbone, run.model, prompts, noise,
                             num_inference_steps=cfg.num_inference_steps,
                             guidance_scale=cfg.guidance_scale, cutoff=cutoff, eta=cfg.eta,
                             step_seeds=seeds, gradient_checkpointing=cfg.gradient_checkpointing,
                             batch_cfg=cfg.batch_cfg,
                             compile_no_grad_steps=cfg.compile_no_grad_steps, windows=windows,
                             keyframes=keyframes_of(cfg.long))
            frames = run.backbone.decode(latents, frames_to_decode(run.reward, cfg.num_frames, rng))
            values, info = score(run.reward, frames, prompts, [rng] * len(prompts))
            if hasattr(run.reward, "loss"):  # a reward with its own shaping (composite)
                loss = run.reward.loss(values, info).mean()
            else:
                loss = reward_loss(values.float(), cfg.loss.target, cfg.loss.grad_scale).mean()
        return loss, values, info

