"""Held-out alignment accuracy of a world model: generate each held-out prompt with a few
evaluation seeds, as the trainer's evaluation does (same noise seeds, same sampler), and ask the
judge which attributes each video gets right. Also the guard metrics: motion (mean absolute
frame difference) and diversity (variance across one prompt's seeds of the pixel embedding),
both exactly as the trainer's evaluation measures them (vader.evaluation.stats), so a gain bought
by freezing the video or collapsing the seeds onto one video shows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vader.evaluation import stats
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.seeds import EVAL, generator_seed
from vader.world.grammar import ATTRIBUTES, CHOICES, heldout_sample
from vader.world.judge import judge

# The world model's sampling settings (conf/backbone_defaults/world.yaml uses the same).
NUM_INFERENCE_STEPS = 10
GUIDANCE_SCALE = 4.0
VAL_SEED = 1234  # train.yaml's val_seed: evaluation seeds val_seed, val_seed + 1, ...


@torch.no_grad()
def generate(backbone, model, prompts: list[str], seeds: list[int], num_frames: int = 8,
             height: int = 32, width: int = 32, guidance_scale: float = GUIDANCE_SCALE,
             num_inference_steps: int = NUM_INFERENCE_STEPS, batch_size: int = 16) -> torch.Tensor:
    """Videos `(B, T, 3, H, W)` in [0, 1], evaluation seed s drawing the noise the trainer's
    evaluation draws for it."""
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = prompts[i:i + batch_size], seeds[i:i + batch_size]
        noise_seeds = [generator_seed(EVAL, x) for x in s]
        noise = make_noise(backbone.latent_shape(len(p), num_frames, height, width), noise_seeds,
                           backbone.device)
        latents = sample(backbone, model, p, noise, num_inference_steps=num_inference_steps,
                         guidance_scale=guidance_scale, step_seeds=noise_seeds)
        out.append(backbone.decode(latents).float().cpu())
    return torch.cat(out)


def accuracy(videos: torch.Tensor, prompts: list[str], num_seeds: int) -> dict[str, Any]:
    """Per-attribute and all-attribute accuracy, motion and diversity of `videos`, laid out
    prompt-major with `num_seeds` seeds per prompt."""
    verdicts = judge(videos, prompts)
    result: dict[str, Any] = {f"accuracy/{a}": float(verdicts[a].float().mean())
                              for a in (*ATTRIBUTES, "all")}
    result["motion"] = float(stats.motion(videos).mean())
    if num_seeds > 1:
        embedded = stats.pixel_embedding(videos)
        embedded = embedded.reshape(-1, num_seeds, embedded.shape[-1])
        result["diversity"] = sum(stats.diversity(e) for e in embedded) / len(embedded)
    result["videos"] = len(prompts)
    return result


def heldout_accuracy(backbone, model, num_seeds: int = 4, guidance_scale: float = GUIDANCE_SCALE,
                     **kwargs) -> dict[str, Any]:
    """`accuracy` on the 18 held-out prompts (grammar.heldout_sample) × `num_seeds` seeds."""
    prompts = [s.prompt for s in heldout_sample() for _ in range(num_seeds)]
    seeds = [VAL_SEED + k for _ in heldout_sample() for k in range(num_seeds)]
    videos = generate(backbone, model, prompts, seeds, guidance_scale=guidance_scale, **kwargs)
    return accuracy(videos, prompts, num_seeds)


def chance() -> dict[str, float]:
    """What guessing uniformly gets: 1/n per attribute, the product for all four."""
    out = {f"accuracy/{a}": 1 / n for a, n in CHOICES.items()}
    out["accuracy/all"] = 1 / (CHOICES["background"] * CHOICES["colour"] * CHOICES["shape"] * CHOICES["motion"])
    return out


def evaluate_model(weights: str | None = None, num_seeds: int = 4,
                   guidance_scale: float | None = None, write: bool = False) -> dict[str, Any]:
    from backbones.world import SHIPPED, world
    torch.manual_seed(0)
    backbone = world(weights)
    scale = GUIDANCE_SCALE if guidance_scale is None else guidance_scale
    result = heldout_accuracy(backbone, backbone.unet, num_seeds, scale)
    result = {"guidance_scale": scale, "num_inference_steps": NUM_INFERENCE_STEPS,
              "seeds": num_seeds, **result, "chance": chance()}
    if write:
        path = Path(weights or SHIPPED) / "config.json"
        config = json.loads(path.read_text())
        config["heldout"] = result
        path.write_text(json.dumps(config, indent=2) + "\n")
    return result
