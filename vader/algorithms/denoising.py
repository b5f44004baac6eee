"""What the algorithms that learn from videos (SFT, DPO) share: a step laid out from the data
stream, each sample's noise, timestep and caption-dropout draw from its stream position (so two
processes match one and a resume continues exactly), and the per-sample denoising error.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from vader.data.loader import Sample
from vader.protocols import Backbone, Plan
from vader.sampling.differentiable import make_noise
from vader.sampling.seeds import TIMESTEP, TRAIN, generator_seed


def timestep_draw(backbone: Backbone) -> Callable[[torch.Generator], float] | int:
    """How a backbone's training timesteps are drawn: its own `training_timestep(generator)`
    where it has one (SVD's EDM noise levels, continuous), else uniform over the training
    schedule's `num_train_timesteps` (DDPM and flow matching, as they were trained)."""
    own = getattr(backbone, "training_timestep", None)
    return own if own is not None else backbone.make_scheduler().config.num_train_timesteps


def draws(positions: list[int], seed: int,
          timestep: int | Callable[[torch.Generator], float]) -> tuple[torch.Tensor, list[float]]:
    """Per sample: a timestep (uniform in [0, timestep) for an int, else `timestep(generator)`)
    and a uniform number in [0, 1) (for caption dropout), both from the sample's stream position."""
    ts, us = [], []
    for p in positions:
        g = torch.Generator().manual_seed(generator_seed(TIMESTEP, seed, p))
        ts.append(int(torch.randint(timestep, (1,), generator=g)) if isinstance(timestep, int)
                  else float(timestep(g)))
        us.append(float(torch.rand((), generator=g)))
    return torch.tensor(ts), us


def noise_for(shape: tuple[int, ...], positions: list[int], seed: int,
              device: torch.device) -> torch.Tensor:
    """The noise of each sample, from its stream position."""
    return make_noise(shape, [generator_seed(TRAIN, seed, p) for p in positions], device)


def denoising_errors(backbone: Backbone, model: nn.Module, latents: torch.Tensor,
                     noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """(B,) the squared error of the model's prediction on `latents` noised to `t` against the
    backbone's training target (epsilon or v), averaged over every non-batch dimension."""
    t = t.to(latents.device)
    noisy = backbone.add_noise(latents, noise, t)
    target = backbone.training_target(latents, noise, t)
    prediction = backbone.predict(model, noisy, t, cond)
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(1)


def data_plan(samples: list[list[Sample]], total: int, num_processes: int,
              numbers: dict[str, Any]) -> Plan:
    """One update over this process's micro-batches of a step, each item (samples, scale) with
    scale = num_processes / total, so the summed losses averaged over processes (DDP) are the
    mean over the step's `total` usable samples. A process left with nothing still joins the
    gradient all-reduce with an item of scale 0; a step with nothing anywhere makes no update."""
    if total == 0:
        return Plan([], numbers)
    scale = num_processes / total
    items = [(part, scale) for part in samples if part]
    return Plan([items or [(None, 0.0)]], numbers)
