"""`backbone=wan`: Wan2.1 text-to-video (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, the 14B, and
checkpoints in the same diffusers layout) as diffusers' WanPipeline runs it: a
WanTransformer3DModel predicting the flow velocity, the causal 3D VAE AutoencoderKLWan (4x in
time, 8x in space, latents normalised by its per-channel mean and std), a UMT5 encoder whose
embeddings past each prompt's length are zeroed, and a flow-matching scheduler with shift.

Latents are (B, 16, (F − 1)/4 + 1, H/8, W/8): a video of F = 4k + 1 frames. Windows, keyframe
intervals and `backprop` count latent frames, like every backbone's. Latent frame 0 decodes to
video frame 0 and latent frame k >= 1 to frames 4k − 3 .. 4k; the VAE is causal (each latent
frame is decoded with a cache of the ones before it, never the ones after), so the frames a reward
asks for are decoded from the latent prefix that reaches the last of them, and equal the same
frames of a whole decode (tests/test_wan.py checks it).

Flow matching: x_t = (1 − σ) x0 + σ ε with σ = t / 1000, and the network predicts v = ε − x0
(`prediction_type = "flow"`); the scheduler's step is x_{t−1} = x_t + (σ_next − σ) v.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler,
                       UniPCMultistepScheduler, WanTransformer3DModel)
from torch import nn

from backbones.dit import TransformerBackbone, check_frames_count, load_parts
from backbones.loading import Source, fetch_file
from backbones.video_unet import decode_checkpointed

# flow_euler: FlowMatchEulerDiscreteScheduler (the one step the stochastic sampler's flow SDE
# generalises); unipc: UniPCMultistepScheduler with flow sigmas, WanPipeline's shipped default.
SCHEDULERS = ("flow_euler", "unipc")


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt cleaning (html entities unescaped, whitespace collapsed); ftfy's text
    repair, which it also runs when ftfy is installed, is left out: prompts here are plain."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class WanBackbone(TransformerBackbone):
    """Prompts -> UMT5 embeddings -> Wan transformer (flow velocity) -> causal 3D VAE."""

    prediction_type = "flow"

    def __init__(self, name: str, transformer: nn.Module, vae: AutoencoderKLWan, text_encoder: nn.Module,
                 tokenizer: Any, scheduler_config: dict[str, Any], scheduler: str = "flow_euler",
                 shift: float | None = None, max_sequence_length: int = 512, lora_rank: int = 16,
                 lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
                 lora_dropout: float = 0.0, gradient_checkpointing: bool = True,
                 checkpoint_blocks: bool = True, text_encoder_offload: bool = True,
                 prompt_cache_size: int = 256) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"backbone.scheduler={scheduler!r}: choose one of {SCHEDULERS}")
        self.name, self.scheduler = name, scheduler
        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        config = dict(scheduler_config)
        # The checkpoint's shift (Wan's UniPC config calls it flow_shift; FlowMatchEuler's, shift),
        # unless backbone.shift gives one (Wan: 3 at 480p, 5 at 720p).
        shift = shift if shift is not None else config.get("flow_shift", config.get("shift", 1.0))
        config.pop("shift", None), config.pop("flow_shift", None)
        if scheduler == "unipc":  # what WanPipeline's own scheduler_config.json sets
            config.update(flow_shift=shift, prediction_type="flow_prediction", use_flow_sigmas=True)
        else:
            config.update(shift=shift)
        self.scheduler_config = config
        self.max_sequence_length = max_sequence_length
        self._setup(lora_rank, lora_alpha, lora_target_modules, lora_dropout, gradient_checkpointing,
                    checkpoint_blocks, text_encoder_offload, prompt_cache_size)
        cfg = vae.config
        self.temporal, self.spatial = cfg.scale_factor_temporal, cfg.scale_factor_spatial
        self.latents_mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        self.latents_std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)

    # --- sizes -----------------------------------------------------------------------------
    def check_video(self, num_frames: int, height: int, width: int) -> None:
        check_frames_count(num_frames, self.temporal)
        self.check_size(height, width, self.transformer.config.patch_size[1])

    # --- model calls -----------------------------------------------------------------------
    def _encode_text(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """UMT5 embeddings padded to `max_sequence_length`, zero past each prompt's tokens, as
        WanPipeline makes them."""
        ids = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                             max_length=self.max_sequence_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = ids.attention_mask.to(device)
        out = self.text_encoder(ids.input_ids.to(device), mask).last_hidden_state
        return out * mask.unsqueeze(-1).to(out.dtype)

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).to(latents.device)
        t = t.expand(latents.shape[0]) if t.numel() == 1 else t
        out = model(hidden_states=latents.to(self.weight_dtype), timestep=t,
                    encoder_hidden_states=cond.to(self.weight_dtype), return_dict=False)[0]
        return out.to(latents.dtype)

    def decode(self, latents: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B, F, 3, H, W) in [0, 1]; with `frame_index`, only the latent prefix reaching
        the last frame asked for is decoded (exact for the causal VAE), then those frames."""
        z = latents.to(self.vae.dtype)
        if frame_index is not None:
            z = z[:, :, :self.latents_reaching(frame_index)]
        z = z * self.latents_std.to(z) + self.latents_mean.to(z)
        video = decode_checkpointed(self._decode, z, self.gradient_checkpointing)
        frames = (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)
        return frames if frame_index is None else frames[:, frame_index.to(frames.device)]

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised latents of frames (B, F, 3, H, W) in [0, 1]: the posterior's mean, or a draw."""
        x = (frames.permute(0, 2, 1, 3, 4) * 2 - 1).to(self.vae.device, self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = (posterior.mean if generator is None else posterior.sample(generator)).float()
        return (z - self.latents_mean.to(z)) / self.latents_std.to(z)

    def _sigmas(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t.to(like.device).float() / 1000).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The flow-matching forward process: (1 − σ) x0 + σ ε, σ = t / 1000 per video."""
        sigma = self._sigmas(t, latents)
        return (1 - sigma) * latents + sigma * noise

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity the network predicts for `add_noise(latents, noise, t)`: ε − x0."""
        return noise - latents

    def make_scheduler(self) -> Any:
        if self.scheduler == "unipc":
            return UniPCMultistepScheduler.from_config(self.scheduler_config)
        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)


def check_one_transformer(pretrained: str, revision: str | None) -> None:
    """Refuse Wan2.2's A14B checkpoints: they denoise with two transformers, one above the
    pipeline's `boundary_ratio` and one below, and loading only `transformer/` would silently run
    the high-noise one at every step. (A folder of parts without model_index.json passes.)"""
    try:
        path = fetch_file(Source("backbone.pretrained", pretrained, "model_index.json", None, revision,
                                 weights=False))
    except FileNotFoundError:
        return
    index = json.loads(Path(path).read_text())
    if index.get("boundary_ratio") is not None or (index.get("transformer_2") or [None])[0]:
        raise ValueError(f"backbone.pretrained={pretrained!r} is a two-transformer Wan2.2 model "
                         f"(boundary_ratio {index.get('boundary_ratio')}); backbone=wan runs one "
                         "transformer: Wan2.1 (1.3B, 14B) or Wan2.2-TI2V-5B")


def wan(pretrained: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", revision: str | None = None,
        transformer: str | None = None, vae: str | None = None, text_encoder: str | None = None,
        transformer_dtype: str = "bf16", vae_dtype: str = "fp32", text_encoder_dtype: str = "bf16",
        scheduler: str = "flow_euler", shift: float | None = None, max_sequence_length: int = 512,
        lora_rank: int = 16, lora_alpha: float | None = None,
        lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
        gradient_checkpointing: bool = True, checkpoint_blocks: bool = True,
        text_encoder_offload: bool = True, prompt_cache_size: int = 256) -> WanBackbone:
    """Wan from a hub id or a local folder in the diffusers layout (transformer/, vae/,
    text_encoder/, tokenizer/, scheduler/); each part can come from its own folder instead."""
    from transformers import UMT5EncoderModel

    parts = load_parts(pretrained, revision, {"transformer": transformer, "vae": vae, "text_encoder": text_encoder},
                       {"transformer": WanTransformer3DModel, "vae": AutoencoderKLWan,
                        "text_encoder": UMT5EncoderModel},
                       {"transformer": transformer_dtype, "vae": vae_dtype, "text_encoder": text_encoder_dtype},
                       check=check_one_transformer)
    return WanBackbone(
        name="wan", **parts, scheduler=scheduler, shift=shift, max_sequence_length=max_sequence_length,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
        lora_dropout=lora_dropout, gradient_checkpointing=gradient_checkpointing,
        checkpoint_blocks=checkpoint_blocks, text_encoder_offload=text_encoder_offload,
        prompt_cache_size=prompt_cache_size)
