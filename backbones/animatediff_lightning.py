"""`backbone=animatediff_lightning`: ByteDance's AnimateDiff-Lightning, motion modules distilled
for 1, 2, 4 or 8 sampling steps, on a Stable Diffusion 1.5-layout image model. The checkpoints
are bare state dicts (`animatediff_lightning_{N}step_diffusers.safetensors`) for diffusers'
default MotionAdapter layout, sampled with Euler on trailing timesteps and no guidance (their
model card: num_inference_steps=N, guidance_scale=1.0).
"""
from __future__ import annotations

from typing import Any

from diffusers import MotionAdapter
from safetensors.torch import load_file

from backbones.animatediff import motion_backbone
from backbones.loading import Source, fetch_file
from backbones.video_unet import VideoUNetBackbone

STEPS = (1, 2, 4, 8)
LIGHTNING_SCHEDULER = dict(timestep_spacing="trailing", beta_schedule="linear")


def lightning_file(steps: int) -> str:
    if steps not in STEPS:
        raise ValueError(f"backbone.steps={steps}: AnimateDiff-Lightning has modules for "
                         f"{STEPS} steps; set num_inference_steps to the same number")
    return f"animatediff_lightning_{steps}step_diffusers.safetensors"


def load_adapter(source: Source, adapter_config: dict[str, Any] | None) -> MotionAdapter:
    path = fetch_file(source)
    adapter = MotionAdapter(**dict(adapter_config or {}))
    missing, unexpected = adapter.load_state_dict(load_file(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source.key}={source.location!r}: {source.filename} does not fit the MotionAdapter "
            f"layout (backbone.adapter_config): {len(missing)} missing keys, {len(unexpected)} "
            f"unexpected (e.g. {(missing or unexpected)[:2]})")
    return adapter


def animatediff_lightning(pretrained: str = "emilianJR/epiCRealism",
                          lightning: str = "ByteDance/AnimateDiff-Lightning", steps: int = 4,
                          adapter_config: dict[str, Any] | None = None,
                          revision: str | None = None, variant: str | None = None,
                          unet: str | None = None, vae: str | None = None,
                          text_encoder: str | None = None, unet_dtype: str = "bf16",
                          vae_dtype: str = "bf16", text_encoder_dtype: str = "bf16",
                          scheduler: str = "euler",
                          scheduler_overrides: dict[str, Any] | None = None, lora_rank: int = 16,
                          lora_alpha: float | None = None,
                          lora_target_modules: list[str] | None = None,
                          lora_dropout: float = 0.0, decode_chunk: int = 1,
                          gradient_checkpointing: bool = True,
                          attention: str = "sdpa",
                          checkpoint_blocks: bool = True) -> VideoUNetBackbone:
    source = Source("backbone.lightning", lightning, lightning_file(steps), weights=False)
    return motion_backbone(
        "animatediff_lightning", source, lambda: load_adapter(source, adapter_config), pretrained,
        revision, variant, unet, vae, text_encoder, (unet_dtype, vae_dtype, text_encoder_dtype),
        scheduler=scheduler,
        scheduler_overrides=LIGHTNING_SCHEDULER if scheduler_overrides is None else scheduler_overrides,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
        lora_dropout=lora_dropout,
        decode_chunk=decode_chunk, gradient_checkpointing=gradient_checkpointing,
        attention=attention, checkpoint_blocks=checkpoint_blocks)
