"""Evaluation on held-out prompts with fixed seeds. The noise of every (prompt, seed) pair comes
from that seed alone, so the same checkpoint gives the same rewards however many processes or
whatever batch split evaluates it, and the base and tuned models see identical noise."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from vader.frames import select_frames
from vader.protocols import Backbone, Reward
from vader.sampler import make_noise, sample
from vader.video import save_video


@dataclass(frozen=True)
class VideoSpec:
    """How videos are sampled: the same for training and evaluation."""

    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    eta: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "prompt"


@torch.no_grad()
def evaluate(backbone: Backbone, model: nn.Module, reward: Reward, prompts: list[str],
             seeds: list[int], spec: VideoSpec, accelerator: Accelerator, batch_size: int,
             out_dir: Path | None = None, video_format: str = "mp4", fps: int = 8) -> dict:
    """Score every (prompt, seed) pair; the main process writes rewards.json and the videos into
    `out_dir`. Returns the summary on every process."""
    items = [(p, s) for p in prompts for s in seeds]
    mine = list(enumerate(items))[accelerator.process_index::accelerator.num_processes]
    results = []
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        batch_prompts = [items[i][0] for i, _ in chunk]
        batch_seeds = [items[i][1] for i, _ in chunk]
        noise = make_noise(backbone.latent_shape(len(chunk), spec.num_frames, spec.height, spec.width),
                           batch_seeds, accelerator.device)
        with accelerator.autocast():
            latents = sample(backbone, model, batch_prompts, noise,
                             num_inference_steps=spec.num_inference_steps,
                             guidance_scale=spec.guidance_scale, eta=spec.eta, step_seeds=batch_seeds)
            frames = backbone.decode(latents)
            picks = [select_frames(reward.frames, spec.num_frames, random.Random(s)) for s in batch_seeds]
            scored = torch.cat([f[None] if idx is None else f[None, idx]
                                for f, idx in zip(frames, picks)])
            values, _ = reward(scored, batch_prompts)
        for (index, _), value, video in zip(chunk, values.float().cpu(), frames):
            results.append({"index": index, "prompt": items[index][0], "seed": items[index][1],
                            "reward": value.item(),
                            "video": (video * 255).round().to(torch.uint8).cpu()})
    results = sorted(gather_object(results), key=lambda r: r["index"])
    summary = {"mean_reward": sum(r["reward"] for r in results) / len(results),
               "num_videos": len(results),
               "items": [{k: r[k] for k in ("prompt", "seed", "reward")} for r in results]}
    if out_dir is not None and accelerator.is_main_process:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for r in results:
            name = f"{r['index']:03d}_{_slug(r['prompt'])}_seed{r['seed']}.{video_format}"
            save_video(r["video"].float() / 255, out_dir / name, fps=fps)
        tmp = out_dir / "rewards.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out_dir / "rewards.json")
    return summary
