"""Adapter for diffusers' UNet3DConditionModel family (ModelScope text-to-video and our tiny
build): a 3D UNet denoiser, a per-frame 2D VAE and a CLIP text encoder.

Built objects come in; nothing here downloads or reads config files, so the same adapter serves
random tiny weights in tests and real checkpoints in training.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from torch.utils.checkpoint import checkpoint

# Diffusers' attention projections; LoRA there is what VADER and the diffusers trainers adapt.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler}


class UNet3DBackbone:
    """Prompts -> CLIP embeddings -> 3D UNet denoiser -> VAE decode, frame by frame."""

    def __init__(self, name: str, unet: nn.Module, vae: AutoencoderKL, text_encoder: nn.Module,
                 tokenizer: Any, scheduler_config: dict[str, Any], scheduler: str = "ddim",
                 lora_rank: int = 8, lora_alpha: float | None = None,
                 lora_target_modules: list[str] | None = None, decode_chunk: int = 4,
                 gradient_checkpointing: bool = True):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
        self.name = name
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_cls = SCHEDULERS[scheduler]
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.decode_chunk = decode_chunk
        self.gradient_checkpointing = gradient_checkpointing
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        # peft marks only the new LoRA parameters trainable; they stay float32 whatever the
        # dtype of the frozen weights, so small updates are not rounded away.
        # (diffusers' UNet3DConditionModel has no `add_adapter`, so peft injects directly.)
        inject_adapter_in_model(LoraConfig(
            r=lora_rank, lora_alpha=lora_alpha or lora_rank, init_lora_weights="gaussian",
            target_modules=list(lora_target_modules or DEFAULT_LORA_TARGETS)), self.unet)
        for p in self.unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    # --- sizes -----------------------------------------------------------------------------
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        # Each UNet down block but the last halves the latent; the VAE divides by vae_scale.
        return self.vae_scale * 2 ** (len(self.unet.config.down_block_types) - 1)

    def check_video(self, num_frames: int, height: int, width: int) -> None:
        m = self.size_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise ValueError(
                f"backbone {self.name!r} cannot make {height}x{width} videos: height and width must "
                f"be positive multiples of {m} (e.g. height={max(m, height // m * m)} "
                f"width={max(m, width // m * m)})")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        self.check_video(num_frames, height, width)
        return (batch, self.unet.config.in_channels, num_frames,
                height // self.vae_scale, width // self.vae_scale)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> "UNet3DBackbone":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    # --- model calls -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return self.text_encoder(ids.input_ids.to(self.device))[0]

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        return model(latents, t, encoder_hidden_states=cond).sample

    def decode(self, latents: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        if frame_index is not None:
            latents = latents.index_select(2, frame_index.to(latents.device))
            t = latents.shape[2]
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w) / self.vae.config.scaling_factor
        flat = flat.to(self.vae.dtype)
        chunks = []
        for part in flat.split(self.decode_chunk):
            # Checkpointing each chunk keeps decoder activations for one chunk at a time, so
            # memory follows the number of frames scored, not the decoder's depth times frames.
            if self.gradient_checkpointing and part.requires_grad:
                chunks.append(checkpoint(self._decode_chunk, part, use_reentrant=False))
            else:
                chunks.append(self._decode_chunk(part))
        frames = torch.cat(chunks).float().reshape(b, t, -1, *chunks[0].shape[-2:])
        return (frames / 2 + 0.5).clamp(0, 1)

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def make_scheduler(self) -> Any:
        return self.scheduler_cls.from_config(self.scheduler_config)

    # --- LoRA ------------------------------------------------------------------------------
    def trainable_module(self) -> nn.Module:
        return self.unet

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        # The `unet.` prefix is what diffusers' `load_lora_weights` expects for pipeline LoRAs.
        state = get_peft_model_state_dict(self.unet)
        return {f"unet.{k}": v.detach().clone() for k, v in state.items()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.lora_state_dict()
        missing, unexpected = set(current) - set(state), set(state) - set(current)
        if missing or unexpected:
            raise ValueError(
                f"LoRA weights do not fit backbone {self.name!r} (lora_rank/targets differ?): "
                f"{len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})")
        for k, v in state.items():
            if v.shape != current[k].shape:
                raise ValueError(f"LoRA weight {k} has shape {tuple(v.shape)}; this backbone "
                                 f"expects {tuple(current[k].shape)} (is lora_rank the same as "
                                 "when it was saved?)")
        set_peft_model_state_dict(self.unet, {k[len("unet."):]: v for k, v in state.items()})

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, module in (("unet", self.unet), ("vae", self.vae), ("text_encoder", self.text_encoder)):
            for k, v in module.state_dict().items():
                if "lora_" not in k:
                    out[f"{prefix}.{k}"] = v.detach().clone()
        return out
