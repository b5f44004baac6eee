"""A tiny random-weight Stable Video Diffusion checkpoint, written by
StableVideoDiffusionPipeline.save_pretrained in the layout stabilityai/stable-video-diffusion-img2vid
has (unet/, vae/, image_encoder/, feature_extractor/, scheduler/), with the constructor arguments
diffusers' own SVD pipeline tests use, except the image encoder's input size: 224 as the real one
(the pipeline resizes first frames to 224), with 14-pixel patches so it stays tiny; and first
frames (images with captions) for prompt_fn=images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                       UNetSpatioTemporalConditionModel)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection


def write_svd(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                                       down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                                       latent_channels=4)
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=14))
    StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                 feature_extractor=CLIPImageProcessor(crop_size=224, size=224)).save_pretrained(folder)
    return folder


def write_first_frames(folder: Path, colours: list[str], size: int = 32) -> Path:
    """One image per colour (a square of it on a grey ground, with noise) and its caption."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
    for i, colour in enumerate(colours):
        pixels = np.full((size, size, 3), 128, np.uint8)
        pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rgb[colour]
        noise = np.random.RandomState(i).randint(-20, 20, pixels.shape)
        Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}_{colour}.png")
        (folder / f"{i}_{colour}.txt").write_text(f"a {colour} square")
    return folder
