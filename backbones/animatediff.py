"""`backbone=animatediff`: a Stable Diffusion 1.5-layout image model plus an AnimateDiff motion
adapter (guoyww/animatediff-motion-adapter-v1-5-2 and compatible), joined into diffusers'
UNetMotionModel exactly as AnimateDiffPipeline joins them.
"""
from __future__ import annotations

from typing import Any, Callable

from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn

from backbones.loading import (Source, check_sources, load_part, load_text_vae, parse_dtype,
                               part_source, text_vae_sources)
from backbones.video_unet import VideoUNetBackbone, check_attention, check_scheduler

# diffusers' AnimateDiff documentation: DDIM with linear betas and linspace timesteps, the
# schedule the motion modules were trained with (SD 1.5 checkpoints ship scaled_linear PNDM).
ANIMATEDIFF_SCHEDULER = dict(beta_schedule="linear", timestep_spacing="linspace",
                             clip_sample=False, steps_offset=1)


def motion_unet(image_unet: UNet2DConditionModel, adapter: MotionAdapter, dtype: Any) -> nn.Module:
    """The image UNet with motion modules inserted: AnimateDiffPipeline's own construction."""
    unet = UNetMotionModel.from_unet2d(image_unet, adapter)
    # nn.Module.to: diffusers' own `.to` warns about fp32-pinned modules this model has none of.
    return nn.Module.to(unet, dtype) if dtype != unet.dtype else unet


def animatediff(pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
                motion_adapter: str = "guoyww/animatediff-motion-adapter-v1-5-2",
                revision: str | None = None, variant: str | None = None,
                unet: str | None = None, vae: str | None = None, text_encoder: str | None = None,
                unet_dtype: str = "bf16", vae_dtype: str = "bf16",
                text_encoder_dtype: str = "bf16", scheduler: str = "ddim",
                scheduler_overrides: dict[str, Any] | None = None, lora_rank: int = 16,
                lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
                lora_dropout: float = 0.0,
                decode_chunk: int = 1, gradient_checkpointing: bool = True,
                attention: str = "sdpa",
                checkpoint_blocks: bool = True) -> VideoUNetBackbone:
    adapter = Source("backbone.motion_adapter", motion_adapter, "config.json")
    return motion_backbone(
        "animatediff", adapter, lambda: load_part(MotionAdapter, adapter), pretrained, revision,
        variant, unet, vae, text_encoder, (unet_dtype, vae_dtype, text_encoder_dtype),
        scheduler=scheduler,
        scheduler_overrides=ANIMATEDIFF_SCHEDULER if scheduler_overrides is None else scheduler_overrides,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
        lora_dropout=lora_dropout,
        decode_chunk=decode_chunk, gradient_checkpointing=gradient_checkpointing,
        attention=attention, checkpoint_blocks=checkpoint_blocks)


def motion_backbone(name: str, adapter_source: Source, load_adapter: Callable[[], MotionAdapter],
                    pretrained: str, revision: str | None, variant: str | None,
                    unet: str | None, vae: str | None, text_encoder: str | None,
                    dtypes: tuple[str, str, str], scheduler: str,
                    **backbone_kwargs: Any) -> VideoUNetBackbone:
    """Check every source (the image model's parts and the motion module), then load and join
    them; shared by `animatediff` and `animatediff_lightning`, which differ in the adapter."""
    check_scheduler(scheduler)
    check_attention(backbone_kwargs.get("attention", "sdpa"))  # before any weight loads
    unet_dtype, vae_dtype, text_encoder_dtype = dtypes
    weight_dtype = parse_dtype(unet_dtype, "backbone.unet_dtype")
    sources = {"unet": part_source("backbone.unet", unet, pretrained, "unet", revision=revision),
               **text_vae_sources(pretrained, revision, vae, text_encoder)}
    check_sources([*sources.values(), adapter_source])
    adapter = load_adapter()
    image_unet = load_part(UNet2DConditionModel, sources["unet"], variant=variant)
    return VideoUNetBackbone(
        name=name, unet=motion_unet(image_unet, adapter, weight_dtype),
        **load_text_vae(sources, vae_dtype, text_encoder_dtype, variant), scheduler=scheduler,
        text_per_frame=True, **backbone_kwargs)
