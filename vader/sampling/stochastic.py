"""The stochastic sampler, written once beside the differentiable one (vader.sampling.
differentiable): it denoises without gradients with a step that draws noise, and records each
step as a Gaussian, so a policy-gradient algorithm (GRPO) can later ask how likely the model,
changed since, finds the same step.

A step kernel turns the model's output at `x_t` into the Gaussian `x_{t-1} ~ N(mean, std²)`.
`DDIMStep` is DDIM with eta > 0 (Song et al. 2021, eq. 12, as diffusers' `DDIMScheduler.step`
computes it); a flow-matching SDE step (Flow-GRPO, DanceGRPO) and EDM's ancestral Euler step (SVD)
plug in beside it by offering the same methods, and `step_kernel` picks the kernel for a
scheduler. Diffusers' schedulers return only the sample, not its mean and standard deviation, so
the Gaussian is ours; a test checks that it draws exactly the sample `DDIMScheduler.step` draws
from the same noise.

Log-probabilities are averaged over the latent dimensions, not summed, as every working
implementation does (DDPO's `ddim_with_logprob`, Flow-GRPO, DanceGRPO): a sum over a video
latent's 10^5 dimensions makes ratios overflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from vader.protocols import Backbone
from vader.sampling.differentiable import conditioning, guided_prediction, step_noise
from vader.sampling.windows import Windows, in_windows


class StepKernel(Protocol):
    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's input at `x` (the scheduler's `scale_model_input`, per video: diffusers'
        Euler scales by the sigma of the step it has reached, which a step trained out of order
        has not)."""

    def gaussian(self, model_output: torch.Tensor, t: torch.Tensor,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shaped like `x`) and standard deviation (broadcastable to it) of the next
        latents, given the model output at `x`; `t` holds one timestep per video."""


def _per_video(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...), on `like`'s device, for broadcasting over a video's latents."""
    return values.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))


class DDIMStep:
    """DDIM with eta > 0 as a Gaussian. With ᾱ the scheduler's `alphas_cumprod`, prev = t − T/n
    (ᾱ_prev = `final_alpha_cumprod` below 0), and x̂0, ε̂ from the model output (epsilon or v):
    std = eta · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)),
    mean = sqrt(ᾱ_prev) · x̂0 + sqrt(1 − ᾱ_prev − std²) · ε̂."""

    def __init__(self, scheduler: Any, eta: float):
        from diffusers import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            raise ValueError(f"the stochastic sampler needs a DDIM scheduler, not "
                             f"{type(scheduler).__name__}; set backbone.scheduler=ddim")
        if eta <= 0:
            raise ValueError(f"eta={eta}: a DDIM step with eta = 0 is deterministic and has no "
                             "log-probability; use eta > 0 (DDPO: 1.0)")
        config = scheduler.config
        if config.thresholding:
            raise ValueError("the stochastic sampler does not support DDIM's dynamic thresholding "
                             "(scheduler thresholding=True)")
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type={config.prediction_type!r}: the stochastic sampler "
                             "handles epsilon and v_prediction")
        self.eta = eta
        self.alphas = scheduler.alphas_cumprod
        self.final = scheduler.final_alpha_cumprod
        self.stride = config.num_train_timesteps // scheduler.num_inference_steps
        self.prediction_type = config.prediction_type
        self.clip = config.clip_sample_range if config.clip_sample else None
        # A scheduler for a scaled forward process (VideoCrafter2's ScaledDDIMScheduler) offers
        # `scales(t) -> (s_t, s_prev)`; its step adds sqrt(ᾱ_prev)(s_prev/s_t − 1) x̂0.
        self.scales = getattr(scheduler, "scales", None)

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x  # DDIM's scale_model_input is the identity

    def _alphas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.cpu().long()
        prev = t - self.stride
        alpha_prev = torch.where(prev >= 0, self.alphas[prev.clamp(min=0)], self.final)
        return self.alphas[t], alpha_prev

    def std(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) standard deviations of the steps at timesteps `t`."""
        alpha, alpha_prev = self._alphas(t)
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        return self.eta * variance ** 0.5

    def gaussian(self, model_output: torch.Tensor, t: torch.Tensor,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, alpha_prev = (_per_video(a, x) for a in self._alphas(t))
        beta = 1 - alpha
        # The same float32 operations in the same order as DDIMScheduler.step.
        if self.prediction_type == "epsilon":
            x0 = (x - beta ** 0.5 * model_output) / alpha ** 0.5
            eps = model_output
        else:
            x0 = alpha ** 0.5 * x - beta ** 0.5 * model_output
            eps = alpha ** 0.5 * model_output + beta ** 0.5 * x
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        std = _per_video(self.std(t), x)
        # Clamped: with zero terminal SNR (CogVideoX) the first step's std² equals 1 − ᾱ_prev at
        # eta = 1, and rounding can take the difference below 0 (a NaN under the root).
        mean = alpha_prev ** 0.5 * x0 + (1 - alpha_prev - std ** 2).clamp(min=0) ** 0.5 * eps
        if self.scales is not None:
            s, s_prev = (_per_video(v, x) for v in self.scales(t))
            mean = mean + alpha_prev ** 0.5 * (s_prev / s - 1) * x0
        return mean, std


def _step_sigmas(timesteps: torch.Tensor, sigmas: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) σ of the steps at timesteps `t` and of the steps after them, from a scheduler's own
    (n,) timesteps and (n + 1,) sigmas."""
    index = (timesteps[None] - t.float().cpu().reshape(-1, 1)).abs().argmin(1)
    return sigmas[index], sigmas[index + 1]


def flow_sde_gaussian(v: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                      eta: float, sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-GRPO's SDE step (Liu et al. 2025) from noise level σ to σ_next (dt = σ_next − σ < 0)
    with velocity v: s = eta · sqrt(σ / (1 − σ)) (σ = 1 replaced by `sigma_max` below the root,
    as Flow-GRPO does, so the first step is finite), mean = x + (v + s²/(2σ) (x + (1 − σ) v)) dt,
    std = s · sqrt(−dt). eta = 0 is the scheduler's Euler step, x + v dt. σ, σ_next broadcast."""
    dt = sigma_next - sigma
    s = eta * (sigma / (1 - torch.where(sigma >= 1, torch.full_like(sigma, sigma_max), sigma))) ** 0.5
    mean = x + (v + s ** 2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    return mean, s * (-dt) ** 0.5


class FlowSDEStep:
    """Flow matching's Euler step made stochastic (`flow_sde_gaussian`), for
    FlowMatchEulerDiscreteScheduler: a timestep's σ and the next one's are the scheduler's own."""

    def __init__(self, scheduler: Any, eta: float):
        if eta <= 0:
            raise ValueError(f"eta={eta}: the flow SDE step with noise level 0 is the deterministic "
                             "Euler step and has no log-probability; use eta > 0 (Flow-GRPO: 0.7)")
        self.eta = eta
        self.sigmas = scheduler.sigmas.float().cpu()          # (n + 1,), ending at 0
        self.timesteps = scheduler.timesteps.float().cpu()    # (n,)
        self.sigma_max = float(self.sigmas[1]) if len(self.sigmas) > 2 else 0.99

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x  # flow matching's network input is the latent itself

    def _sigmas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _step_sigmas(self.timesteps, self.sigmas, t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = self._sigmas(t)
        return flow_sde_gaussian(torch.zeros_like(sigma), torch.zeros_like(sigma), sigma, sigma_next,
                                 self.eta, self.sigma_max)[1]

    def gaussian(self, model_output: torch.Tensor, t: torch.Tensor,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, sigma_next = (_per_video(s, x).to(x.dtype) for s in self._sigmas(t))
        mean, std = flow_sde_gaussian(model_output, x, sigma, sigma_next, self.eta, self.sigma_max)
        return mean, std


class EulerAncestralStep:
    """The Euler step of EDM-style samplers (diffusers' `EulerDiscreteScheduler`: SVD, AnimateDiff-
    Lightning) made stochastic as k-diffusion's `sample_euler_ancestral` / diffusers'
    `EulerAncestralDiscreteScheduler` do, on the scheduler's own sigmas: from σ to σ_next,
    σ_up = min(σ_next, eta · sqrt(σ_next² (σ² − σ_next²) / σ²)), σ_down = sqrt(σ_next² − σ_up²),
    mean = x + (x − x̂0)/σ · (σ_down − σ), std = σ_up. eta = 0 is the scheduler's Euler step; eta = 1
    is the exact posterior q(x_σnext | x_σ, x̂0) of the variance-exploding process."""

    def __init__(self, scheduler: Any, eta: float):
        if eta <= 0:
            raise ValueError(f"eta={eta}: the Euler step with eta = 0 is deterministic and has no "
                             "log-probability; use eta > 0 (1.0: the ancestral sampler)")
        config = scheduler.config
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type={config.prediction_type!r}: the stochastic sampler "
                             "handles epsilon and v_prediction")
        if config.get("final_sigmas_type", "zero") != "zero":
            raise ValueError("the stochastic Euler step needs a schedule ending at sigma 0 "
                             "(final_sigmas_type='zero')")
        self.eta, self.prediction_type = eta, config.prediction_type
        self.sigmas = scheduler.sigmas.float().cpu()          # (n + 1,), ending at 0
        self.timesteps = scheduler.timesteps.float().cpu()    # (n,)

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = _per_video(_step_sigmas(self.timesteps, self.sigmas, t)[0], x).to(x.dtype)
        return x / (sigma ** 2 + 1) ** 0.5

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma, sigma_next = _step_sigmas(self.timesteps, self.sigmas, t)
        up = torch.minimum(sigma_next, self.eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2)
                                                   / sigma ** 2).clamp(min=0) ** 0.5)
        return sigma, up, (sigma_next ** 2 - up ** 2).clamp(min=0) ** 0.5

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return self._split(t)[1]

    def gaussian(self, model_output: torch.Tensor, t: torch.Tensor,
                 x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, up, down = (_per_video(v, x) for v in self._split(t))
        # x̂0 as EulerDiscreteScheduler.step computes it, from the unscaled latents x.
        if self.prediction_type == "epsilon":
            x0 = x - sigma * model_output
        else:
            x0 = model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
        mean = x + (x - x0) / sigma * (down - sigma)
        return mean.to(x.dtype), up


def step_kernel(scheduler: Any, eta: float) -> StepKernel:
    """The kernel for `scheduler` (whose timesteps are set): the flow SDE step for flow matching's
    Euler scheduler, the ancestral Euler step for the EDM Euler scheduler, DDIM's otherwise (which
    refuses schedulers it cannot use)."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowSDEStep(scheduler, eta)
    if isinstance(scheduler, EulerDiscreteScheduler):
        return EulerAncestralStep(scheduler, eta)
    if scheduler.config.get("use_flow_sigmas") or scheduler.config.get("prediction_type") == "flow_prediction":
        raise ValueError(f"the stochastic sampler's flow SDE step generalises the Euler step, not "
                         f"{type(scheduler).__name__}; set backbone.scheduler=flow_euler")
    return DDIMStep(scheduler, eta)


def log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) Gaussian log-density of `x` under N(mean, std²), averaged over all but the first
    dimension. Computed in float32 whatever the latents' precision: ratios exp(Δ log p) of
    nearly equal numbers need the digits."""
    x, mean, std = x.float(), mean.float(), std.float()
    density = -((x - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return density.flatten(1).mean(1)


@dataclass
class Trajectory:
    """What a rollout recorded, for `S` steps and `B` videos: `latents` (S+1, B, ...), step i
    going from latents[i] to latents[i+1]; `means` (S, B, ...) and `stds` (S, B) of each step's
    Gaussian; `log_probs` (S, B) of the recorded sample under it; `timesteps` (S,); `cond` the
    conditioning the model saw (with guidance, the empty prompt's then the prompts')."""

    latents: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    log_probs: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor

    @property
    def final(self) -> torch.Tensor:
        return self.latents[-1]


def select_cond(cond: torch.Tensor, index: torch.Tensor, guided: bool) -> torch.Tensor:
    """The conditioning of the videos at `index`, in `conditioning`'s layout."""
    if not guided:
        return cond[index]
    uncond, text = cond.chunk(2)
    return torch.cat([uncond[index], text[index]])


@torch.no_grad()
def rollout(backbone: Backbone, model: nn.Module, prompts: list[str], noise: torch.Tensor, *,
            num_inference_steps: int, guidance_scale: float, eta: float, step_seeds: list[int],
            batch_cfg: bool = True, windows: Windows | None = None) -> Trajectory:
    """Denoise `noise` without gradients, drawing each step's noise from `step_seeds` as the
    differentiable sampler does with the same eta (so both give the same video), and record every
    step. Costs what plain sampling costs plus arithmetic on the latents. `windows`: a long
    latent predicted window by window, overlaps fused (vader.sampling.windows); the step's
    Gaussian is then the whole video's."""
    if len(prompts) != noise.shape[0] or len(step_seeds) != noise.shape[0]:
        raise ValueError(f"{len(prompts)} prompts and {len(step_seeds)} step seeds for "
                         f"{noise.shape[0]} noise samples")
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(num_inference_steps)
    kernel = step_kernel(scheduler, eta)
    cond = conditioning(backbone, prompts, guidance_scale)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    latents, means, stds, log_probs = [x], [], [], []
    for i, t in enumerate(scheduler.timesteps):
        ts = t.expand(len(prompts))
        out = in_windows(lambda w: guided_prediction(backbone, model, w, t, cond, guidance_scale,
                                                     batch_cfg), kernel.model_input(x, ts), windows)
        mean, std = kernel.gaussian(out, ts, x)
        x = (mean + std * step_noise(x, step_seeds, i)).to(noise.dtype)
        latents.append(x)
        means.append(mean)
        stds.append(std.flatten())
        log_probs.append(log_prob(x, mean, std))
    return Trajectory(torch.stack(latents), torch.stack(means), torch.stack(stds),
                      torch.stack(log_probs), scheduler.timesteps.clone(), cond)
