"""Pretraining the world model (`python -m vader.world pretrain`): every part of the tiny
ModelScope-architecture model, from random weights, on rendered shapes-world videos.

1. The VAE, as an autoencoder of world frames (mean squared error plus a small KL term, as
   the SD VAE is trained, without its adversarial and perceptual terms): a random VAE cannot
   draw a clean shape. Then the latent scaling factor is set so latents have unit variance.
2. The UNet and the text encoder, with the project's SFT loss
   (`vader.algorithms.denoising.denoising_errors`, the per-sample noise and timestep draws
   `draws`/`noise_for`, caption dropout 0.1 as in vader.algorithms.sft) on freshly rendered
   training-split clips: sample i is training scene i mod 270 (shuffled once) rendered with seed
   i, so the data never repeats and needs no files. Full weights, not LoRA: the trainer's SFT
   adapts LoRA only, so this loop is its own, with an exponential moving average of the weights
   (what diffusion pretraining ships; it samples cleaner than the last step's weights).

Everything is a function of the settings and the seed: the same command makes the same weights
on the same software (floating-point sums may differ across machines and library versions).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from backbones.tiny import SCHEDULER_CONFIG
from backbones.video_unet import VideoUNetBackbone
from backbones.world import build_parts, load_parts, save_parts
from vader.algorithms.denoising import denoising_errors, draws, noise_for
from vader.world.grammar import scenes, vocabulary
from vader.world.render import render_batch


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    num_frames: int = 8
    height: int = 32
    width: int = 32
    vae_steps: int = 1000         # autoencoder updates of `vae_batch` frames
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6          # small: the latents stay close to deterministic codes
    steps: int = 700            # UNet + text encoder updates of `batch` clips
    batch: int = 16
    lr: float = 5e-4              # 1e-3 diverged for a while (loss 0.03 -> 1.1 at step 200) before recovering
    warmup: int = 100
    # Timesteps are drawn uniformly from [min_timestep, 1000). Above 0 the updates go to the
    # noisiest steps, where only the prompt says which way the object moves (below about
    # t = 900 the noisy clip itself shows it, so the motion word has little to teach).
    min_timestep: int = 0
    caption_dropout: float = 0.1  # as algorithm=sft: keeps the unconditional prediction for guidance
    ema_decay: float = 0.995
    channels: tuple[int, ...] = (32, 64)      # backbones/tiny.py's UNet
    vae_channels: tuple[int, ...] = (16, 32)   # half tiny's: flat shapes need little, decoding is per step
    text_dim: int = 32
    max_prompt_tokens: int = 16
    # v: the network predicts sqrt(ᾱ)ε − sqrt(1−ᾱ)x0, so its x0 estimate at the noisiest steps is not
    # its ε error times sqrt((1−ᾱ)/ᾱ) ≈ 15 (measured with epsilon: denoising fine at t ≤ 700,
    # samples from pure noise a smear; Salimans & Ho 2022 give the same reason).
    prediction_type: str = "v_prediction"


def noisiest(t: torch.Tensor, min_timestep: int, num_timesteps: int) -> torch.Tensor:
    """Timesteps uniform over [0, num_timesteps) mapped to uniform over [min_timestep, num_timesteps)."""
    return min_timestep + t * (num_timesteps - min_timestep) // num_timesteps


def clip_source(settings: Settings):
    """Sample i -> (prompt, render seed): every training scene once per 270 samples."""
    train = [s.prompt for s in scenes("train")]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed)).tolist()
    return lambda i: (train[order[i % len(train)]], settings.seed * 1_000_003 + i)


def clips(settings: Settings, start: int, n: int) -> tuple[list[str], torch.Tensor]:
    source = clip_source(settings)
    prompts, seeds = zip(*(source(i) for i in range(start, start + n)))
    return list(prompts), render_batch(list(prompts), list(seeds), settings.num_frames,
                                       settings.height, settings.width)


def train_vae(vae, settings: Settings, log) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr)
    vae.train().requires_grad_(True)
    g = torch.Generator().manual_seed(settings.seed)
    clips_per_step = max(1, settings.vae_batch // settings.num_frames)
    bar = tqdm(range(settings.vae_steps), desc="vae", dynamic_ncols=True)
    loss = torch.tensor(0.0)
    for step in bar:
        _, videos = clips(settings, step * clips_per_step, clips_per_step)
        x = videos.flatten(0, 1) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = ((recon - x) ** 2).mean() + settings.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log({"phase": "vae", "step": step, "loss": loss.item()})
    vae.eval().requires_grad_(False)
    return loss.item()


@torch.no_grad()
def latent_scale(vae, settings: Settings) -> float:
    """1 / std of the posterior means of 64 fresh clips: latents of unit variance, as the
    scheduler's noise assumes (the SD recipe's scaling factor, measured the same way)."""
    _, videos = clips(settings, 10_000_000, 64)
    z = vae.encode(videos.flatten(0, 1) * 2 - 1).latent_dist.mean
    return float(1 / z.float().std())


@torch.no_grad()
def vae_ceiling(vae, settings: Settings) -> dict[str, float]:
    """The judge's accuracy on the VAE's reconstructions of the 54 held-out prompts' renders:
    the most any model drawing through this VAE can reach."""
    from vader.world.judge import judge
    prompts = [s.prompt for s in scenes("heldout")]
    videos = render_batch(prompts, list(range(len(prompts))), settings.num_frames,
                          settings.height, settings.width)
    x = videos.flatten(0, 1) * 2 - 1
    recon = (vae.decode(vae.encode(x).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    verdicts = judge(recon.reshape(videos.shape), prompts)
    return {k: round(float(v.float().mean()), 3) for k, v in verdicts.items()}


def plain_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights without the (unused, zero) LoRA layers the backbone adapter injects,
    under the names a fresh module has."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items()
            if "lora_" not in k}


def pretrain(out: Path, settings: Settings = Settings(), init: Path | None = None) -> dict[str, Any]:
    """Train a world model into `out`; with `init` (a world model folder), continue training
    its UNet and text encoder for `settings.steps` more updates on clips it has not seen (its
    VAE is kept: give vae_steps 0)."""
    torch.manual_seed(settings.seed)
    start = time.time()
    history: list[dict[str, Any]] = []
    earlier: list[dict[str, Any]] = []
    if init is not None:
        if settings.vae_steps:
            raise ValueError("--init continues a model whose VAE is trained: give --vae-steps 0")
        parts, config = load_parts(init)
        earlier = config.get("made", {}).get("stages", [config.get("made")])
        vae_loss, ceiling = None, config["made"].get("vae_ceiling")  # no VAE trained here
    else:
        config = {"channels": list(settings.channels), "vae_channels": list(settings.vae_channels),
                  "text_dim": settings.text_dim, "max_prompt_tokens": settings.max_prompt_tokens,
                  "vocabulary": vocabulary(), "scaling_factor": 1.0,
                  "prediction_type": settings.prediction_type}
        parts = build_parts(config, settings.seed)
        vae_loss = train_vae(parts["vae"], settings, history.append)
        config["scaling_factor"] = latent_scale(parts["vae"], settings)
        parts["vae"].register_to_config(scaling_factor=config["scaling_factor"])
        ceiling = vae_ceiling(parts["vae"], settings)
        print(f"vae: loss {vae_loss:.4f}, judge on its reconstructions of held-out renders {ceiling}")
    vae_seconds = time.time() - start
    # Clips continue where the earlier stages stopped, so no clip is seen twice.
    offset = sum(stage["settings"]["steps"] * stage["settings"]["batch"] for stage in earlier)

    backbone = VideoUNetBackbone(name="world", **parts, scheduler_config=SCHEDULER_CONFIG,
                                 scheduler_overrides={"prediction_type": settings.prediction_type},
                                 lora_rank=1, gradient_checkpointing=False)
    trained = [p for n, p in backbone.unet.named_parameters() if "lora_" not in n]
    trained += list(backbone.text_encoder.parameters())
    for p in trained:
        p.requires_grad_(True)
    ema = [p.detach().clone() for p in trained]
    opt = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / settings.warmup))
    num_timesteps = SCHEDULER_CONFIG["num_train_timesteps"]
    bar = tqdm(range(settings.steps), desc="unet", dynamic_ncols=True)
    for step in bar:
        first = 20_000_000 + offset + step * settings.batch
        prompts, videos = clips(settings, first, settings.batch)
        positions = list(range(first, first + settings.batch))
        latents = backbone.encode(videos)
        t, uniforms = draws(positions, settings.seed, num_timesteps)
        t = noisiest(t, settings.min_timestep, num_timesteps)
        texts = ["" if u < settings.caption_dropout else p for u, p in zip(uniforms, prompts)]
        noise = noise_for(tuple(latents.shape), positions, settings.seed, latents.device)
        loss = denoising_errors(backbone, backbone.unet, latents, noise, t,
                                backbone._encode(texts)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        # EMA with the usual warm-up, so early averages are not dominated by random weights.
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, trained):
                e.lerp_(p.detach(), 1 - decay)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            history.append({"phase": "unet", "step": step, "loss": loss.item(),
                            "seconds": round(time.time() - start, 1)})
    with torch.no_grad():
        for e, p in zip(ema, trained):
            p.copy_(e)
    states = {"unet": plain_state(backbone.unet), "vae": backbone.vae.state_dict(),
              "text_encoder": backbone.text_encoder.state_dict()}
    own = (f"python -m vader.world pretrain --out {out} --seed {settings.seed}"
           + (f" --init {init}" if init is not None else "")
           + "".join(f" --{k.replace('_', '-')} {v}" for k, v in _changed(settings).items()))
    config["made"] = {"command": " && ".join([*(stage["command"] for stage in earlier), own]),
                      "settings": {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in asdict(settings).items()},
                      "vae_seconds": round(vae_seconds, 1), "final_vae_loss": None if vae_loss is None else round(vae_loss, 5),
                      "vae_ceiling": ceiling,
                      "seconds": round(time.time() - start, 1), "torch": torch.__version__}
    stage = {**config["made"], "command": own}
    config["made"]["stages"] = [*earlier, stage]
    config["made"]["total_seconds"] = round(sum(st["seconds"] for st in config["made"]["stages"]), 1)
    save_parts(states, config, Path(out))
    (Path(out) / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return config


def _changed(settings: Settings) -> dict[str, Any]:
    default = Settings()
    return {k: v for k, v in asdict(settings).items()
            if k in ("vae_steps", "steps", "batch", "lr", "warmup", "min_timestep") and v != getattr(default, k)}

