"""`backbone=modelscope`: ModelScope text-to-video (damo-vilab/text-to-video-ms-1.7b and
checkpoints in the same diffusers layout): UNet3DConditionModel, AutoencoderKL, an OpenCLIP-H
text encoder (CLIPTextModel) and its tokenizer, as diffusers' TextToVideoSDPipeline loads them.
"""
from __future__ import annotations

from typing import Any

from diffusers import UNet3DConditionModel

from backbones.loading import (check_sources, load_part, load_text_vae, parse_dtype, part_source,
                               text_vae_sources)
from backbones.video_unet import VideoUNetBackbone, check_attention, check_scheduler


def modelscope(pretrained: str = "damo-vilab/text-to-video-ms-1.7b", revision: str | None = None,
               variant: str | None = None, unet: str | None = None, vae: str | None = None,
               text_encoder: str | None = None, unet_dtype: str = "bf16", vae_dtype: str = "bf16",
               text_encoder_dtype: str = "bf16", scheduler: str = "dpmsolver",
               scheduler_overrides: dict[str, Any] | None = None, lora_rank: int = 16,
               lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
               lora_dropout: float = 0.0,
               decode_chunk: int = 1, gradient_checkpointing: bool = True,
               attention: str = "sdpa",
               checkpoint_blocks: bool = True) -> VideoUNetBackbone:
    check_scheduler(scheduler)
    check_attention(attention)  # before any weight loads
    weight_dtype = parse_dtype(unet_dtype, "backbone.unet_dtype")
    sources = {"unet": part_source("backbone.unet", unet, pretrained, "unet", revision=revision),
               **text_vae_sources(pretrained, revision, vae, text_encoder)}
    check_sources(list(sources.values()))  # every part is reachable before any weight loads
    return VideoUNetBackbone(
        name="modelscope",
        unet=load_part(UNet3DConditionModel, sources["unet"], weight_dtype, variant=variant),
        **load_text_vae(sources, vae_dtype, text_encoder_dtype, variant),
        scheduler=scheduler, scheduler_overrides=scheduler_overrides, lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_target_modules=lora_target_modules, lora_dropout=lora_dropout,
        decode_chunk=decode_chunk, gradient_checkpointing=gradient_checkpointing,
        attention=attention, checkpoint_blocks=checkpoint_blocks)
