"""A tiny random-weight CogVideoX checkpoint, written by CogVideoXPipeline.save_pretrained in the
layout THUDM/CogVideoX-2b has (model_index.json, transformer/, vae/, text_encoder/, tokenizer/,
scheduler/), so tests run backbones/cogvideox.py's real loading code with no download. Sizes are
the constructor arguments diffusers' own CogVideoX pipeline tests use; `rotary=True` gives the 5B's
kind (3D rotary embeddings, no sin-cos positions). The T5 tokenizer is built in memory."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from tests.tiny_wan import tiny_t5_tokenizer

TEXT_LENGTH = 16  # the transformer's max_text_seq_length (CogVideoX: 226)


def write_cogvideox(folder: Path, seed: int = 0, rotary: bool = False) -> Path:
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                 temporal_compression_ratio=4)
    torch.manual_seed(seed + 1)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32,
                                           num_layers=2, num_heads=4, relative_attention_num_buckets=8))
    torch.manual_seed(seed + 2)
    # The 5B's kind: rotary embeddings instead of sin-cos positions (THUDM/CogVideoX-5b's config).
    # Rotary splits a head's dimensions 1/4 time, 3/8 height, 3/8 width: 16 keeps them even.
    positions = dict(use_rotary_positional_embeddings=True, attention_head_dim=16) if rotary else {
        "attention_head_dim": 8}
    transformer = CogVideoXTransformer3DModel(num_attention_heads=4, in_channels=4,
                                              out_channels=4, time_embed_dim=2, text_embed_dim=32,
                                              num_layers=2, sample_width=2, sample_height=2, sample_frames=9,
                                              patch_size=2, temporal_compression_ratio=4,
                                              max_text_seq_length=TEXT_LENGTH, **positions)
    # CogVideoX-2b's schedule: v prediction, SNR shift 3, zero terminal SNR, trailing timesteps.
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing", snr_shift_scale=3.0, clip_sample=False)
    CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                      scheduler=scheduler).save_pretrained(folder)
    return folder
