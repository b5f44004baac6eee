"""Supervised fine-tuning (`algorithm=sft`): the standard denoising loss of the backbone on
captioned videos, into the LoRA. A step reads `train_batch_size` clips per process per micro-step
(vader.data.stream: decoded by DataLoader workers, encoded once by the frozen VAE and cached),
noises each clip's latents to a timestep drawn uniformly from the training schedule, and
regresses the backbone's prediction onto its training target (the noise for epsilon models, the
velocity for v models) with the mean squared error.

Options: `caption_dropout` replaces a sample's caption with the empty prompt, so the model keeps
its unconditional prediction and classifier-free guidance keeps working after fine-tuning (0.1:
the rate of the SD/ModelScope training recipes); `min_snr_gamma` weights each sample by Min-SNR
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"; γ = 5 is the
paper's choice; null: uniform weights, the default).
"""
from __future__ import annotations

from typing import Any

import torch

from vader.algorithms.denoising import data_plan, denoising_errors, draws, noise_for, timestep_draw
from vader.algorithms.losses import min_snr_weight
from vader.data.stream import frame_rule, training_data
from vader.protocols import Backbone, ItemLoss, Plan, Reward, Run


class SFT:
    progress = ("loss",)
    data = "clips"

    def __init__(self, caption_dropout: float = 0.1, min_snr_gamma: float | None = None):
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"algorithm.caption_dropout={caption_dropout}: use a share in [0, 1)")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"algorithm.min_snr_gamma={min_snr_gamma}: use a positive γ (the "
                             "paper: 5) or null for uniform weights")
        self.caption_dropout, self.min_snr_gamma = caption_dropout, min_snr_gamma

    def check(self, cfg: Any, num_processes: int) -> None:
        frame_rule(cfg)

    def check_models(self, cfg: Any, backbone: Backbone, reward: Reward) -> None:
        # The reward only evaluates; Min-SNR weights read a DDPM schedule's ᾱ at a discrete
        # timestep, which flow matching and EDM's continuous noise levels (SVD) do not have.
        if self.min_snr_gamma and (not hasattr(backbone.make_scheduler(), "alphas_cumprod")
                                   or hasattr(backbone, "training_timestep")):
            raise ValueError(f"algorithm.min_snr_gamma={self.min_snr_gamma}: Min-SNR weights need a "
                             f"DDPM noise schedule with discrete timesteps, which backbone "
                             f"{backbone.name!r} does not train on; set algorithm.min_snr_gamma=null")

    def setup(self, run: Run) -> None:
        self.run = run
        self.stream = training_data(run)
        scheduler = run.backbone.make_scheduler()
        self.timestep = timestep_draw(run.backbone)
        self.alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)  # flow matching: none

    def plan(self, step: int) -> Plan:
        samples, total = self.stream.step(step)
        return data_plan(samples, total, self.run.accelerator.num_processes,
                         {**self.stream.numbers(), "samples": total})

    def loss(self, item: tuple[list | None, float]) -> ItemLoss:
        run, cfg = self.run, self.run.cfg
        samples, scale = item
        device = run.accelerator.device
        if samples is None:  # nothing here this step: a zero-weight pass keeps DDP in step
            shape = run.backbone.latent_shape(1, cfg.num_frames, cfg.height, cfg.width)
            latents, texts, positions = torch.zeros(shape, device=device), [""], [0]
        else:
            latents = torch.stack([s.videos[0] for s in samples])
            texts = [self.stream.prompt(s) for s in samples]
            positions = [s.position for s in samples]
        t, uniforms = draws(positions, cfg.seed, self.timestep)
        # The empty prompt is the unconditional input (for an image-to-video backbone: no image).
        texts = ["" if u < self.caption_dropout else text for u, text in zip(uniforms, texts)]
        noise = noise_for(tuple(latents.shape), positions, cfg.seed, device)
        errors = denoising_errors(run.backbone, run.model, latents, noise, t,
                                  self.stream.embed(texts))
        weights = (min_snr_weight(self.alphas_cumprod[t], self.min_snr_gamma,
                                  run.backbone.prediction_type).to(device)
                   if self.min_snr_gamma else torch.ones_like(errors))
        numbers = {"loss": errors.detach().mean(), "weighted_loss": (weights * errors).detach().mean()}
        return ItemLoss((weights * errors).sum() * scale, numbers,
                        weight=len(samples) if samples is not None else 0.0)

    def report(self) -> dict[str, Any]:
        return {"data": self.stream.report()}

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
