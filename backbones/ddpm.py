"""The DDPM forward process and training targets, for backbones whose denoiser was trained on
it (the UNet backbones, CogVideoX): the noise levels are the scheduler's `alphas_cumprod`."""
from __future__ import annotations

import functools

import torch


class DDPMProcess:
    """Mixed into a backbone with `make_scheduler`, `name` and `prediction_type`."""

    @functools.cached_property
    def _alphas_cumprod(self) -> torch.Tensor:
        # The training schedule is fixed at construction; building a scheduler per batch is not.
        return self.make_scheduler().alphas_cumprod

    def _alphas(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        alphas = self._alphas_cumprod.to(like.device)[t.to(like.device).long()]
        return alphas.float().reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward (DDPM) process the denoiser was trained on, whatever the sampler:
        sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, with one timestep per video in `t`."""
        alpha = self._alphas(t, latents)
        return alpha ** 0.5 * latents + (1 - alpha) ** 0.5 * noise

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """What `predict` should return for `add_noise(latents, noise, t)`: the noise ε
        (epsilon prediction) or the velocity sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0 (v prediction)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            alpha = self._alphas(t, latents)
            return alpha ** 0.5 * noise - (1 - alpha) ** 0.5 * latents
        raise ValueError(f"backbone {self.name!r}: no training target for prediction_type="
                         f"{self.prediction_type!r} (epsilon and v_prediction are supported)")
