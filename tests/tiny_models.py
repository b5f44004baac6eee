"""Tiny random-weight checkpoints of the real model classes, written to folders in the exact
layouts the real backbones load (diffusers pipeline folders, a motion adapter folder, an
AnimateDiff-Lightning state-dict file), so tests run the real loading code with no download."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (DDIMScheduler, MotionAdapter, StableDiffusionPipeline,
                       TextToVideoSDPipeline, UNet2DConditionModel)
from safetensors.torch import save_file

from backbones.animatediff_lightning import lightning_file
from backbones.tiny import (SCHEDULER_CONFIG, byte_level_tokenizer, tiny_text_encoder,
                            tiny_unet3d, tiny_vae)

# A Stable Diffusion 1.5 scheduler_config.json's settings (PNDM there; the class is chosen by the
# backbone, only these numbers are read).
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                      steps_offset=1, prediction_type="epsilon")
# Same shape as diffusers' own AnimateDiff pipeline tests, widths a multiple of 8 groups.
ADAPTER_CONFIG = dict(block_out_channels=(32, 64), motion_layers_per_block=1,
                      motion_norm_num_groups=8, motion_num_attention_heads=4,
                      motion_max_seq_length=32)


def _text_vae(seed: int, scheduler_config: dict) -> dict:
    tokenizer = byte_level_tokenizer(24)
    return dict(tokenizer=tokenizer, text_encoder=tiny_text_encoder(seed, tokenizer),
                vae=tiny_vae(seed + 2), scheduler=DDIMScheduler(**scheduler_config))


def write_modelscope(folder: Path, seed: int = 0) -> Path:
    """A ModelScope-layout pipeline folder: model_index.json, unet (UNet3DConditionModel), vae,
    text_encoder, tokenizer, scheduler."""
    TextToVideoSDPipeline(unet=tiny_unet3d(seed + 1), **_text_vae(seed, SCHEDULER_CONFIG)
                          ).save_pretrained(folder)
    return folder


def tiny_image_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8, sample_size=8)


def tiny_adapter(seed: int) -> MotionAdapter:
    torch.manual_seed(seed)
    adapter = MotionAdapter(**ADAPTER_CONFIG)
    # diffusers zero-initialises the motion modules' output projections, which would make the
    # motion path an identity; random values make parity tests see it.
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return adapter


def write_sd15(folder: Path, seed: int = 10) -> Path:
    """A Stable Diffusion 1.5-layout pipeline folder (unet is a UNet2DConditionModel)."""
    StableDiffusionPipeline(unet=tiny_image_unet(seed + 1), **_text_vae(seed, SD15_SCHEDULER),
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def write_motion_adapter(folder: Path, seed: int = 20) -> Path:
    tiny_adapter(seed).save_pretrained(folder)
    return folder


def write_lightning(folder: Path, steps: int = 4, seed: int = 30) -> Path:
    """A folder holding one AnimateDiff-Lightning-style file: a bare MotionAdapter state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_adapter(seed).state_dict().items()},
              folder / lightning_file(steps))
    return folder
