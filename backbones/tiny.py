"""`backbone=tiny`: the ModelScope architecture (diffusers' UNet3DConditionModel, a 2D VAE and a
CLIP text encoder) at toy sizes with seeded random weights. It needs no download, runs on a CPU in
seconds, and exercises exactly the code paths a real ModelScope checkpoint does.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from backbones.video_unet import VideoUNetBackbone

# ModelScope's scheduler settings (damo-vilab/text-to-video-ms-1.7b, scheduler_config.json).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, prediction_type="epsilon")


def byte_level_tokenizer(max_length: int) -> CLIPTokenizer:
    """A real CLIP BPE tokenizer whose vocabulary is just the 256 byte symbols (no merges), so it
    is built in memory and never downloads; text still maps to distinct token sequences."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    # GPT-2/CLIP byte-to-unicode table: unprintable bytes are shifted past 255.
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_text_encoder(seed: int, tokenizer: CLIPTokenizer, text_dim: int = 32) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def tiny_vae(seed: int, vae_channels: tuple[int, ...] = (32, 64)) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(vae_channels),
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), norm_num_groups=8)


def tiny_unet3d(seed: int, channels: tuple[int, ...] = (32, 64),
                text_dim: int = 32) -> UNet3DConditionModel:
    torch.manual_seed(seed)
    return UNet3DConditionModel(
        block_out_channels=tuple(channels), layers_per_block=1, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * (len(channels) - 1) + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (len(channels) - 1),
        cross_attention_dim=text_dim, attention_head_dim=8, norm_num_groups=8)


def tiny(seed: int = 0, channels: tuple[int, ...] = (32, 64), text_dim: int = 32,
         vae_channels: tuple[int, ...] = (32, 64), max_prompt_tokens: int = 24,
         scheduler: str = "ddim", lora_rank: int = 8, lora_alpha: float | None = None,
         lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
         gradient_checkpointing: bool = True, attention: str = "sdpa",
         checkpoint_blocks: bool = False) -> VideoUNetBackbone:
    tokenizer = byte_level_tokenizer(max_prompt_tokens)
    # Seed before each component, so changing one size does not reshuffle the others' weights.
    return VideoUNetBackbone(
        name="tiny", unet=tiny_unet3d(seed + 1, channels, text_dim),
        vae=tiny_vae(seed + 2, vae_channels),
        text_encoder=tiny_text_encoder(seed, tokenizer, text_dim), tokenizer=tokenizer,
        scheduler_config=SCHEDULER_CONFIG, scheduler=scheduler, lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_target_modules=lora_target_modules, lora_dropout=lora_dropout,
        gradient_checkpointing=gradient_checkpointing, attention=attention,
        checkpoint_blocks=checkpoint_blocks)
