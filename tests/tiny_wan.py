"""A tiny random-weight Wan2.1 checkpoint, written by WanPipeline.save_pretrained in the layout
Wan-AI/Wan2.1-T2V-1.3B-Diffusers has (model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/), so tests run backbones/wan.py's real loading code with no download.
Sizes are the constructor arguments diffusers' own Wan pipeline tests use; the UMT5 tokenizer is
a Unigram T5 tokenizer built in memory from a word list (no sentencepiece file)."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

WORDS = ("a red blue green circle square moves left right up down on white black background "
         "balloon car cat dog dance monkey the of in").split()


def tiny_t5_tokenizer() -> T5Tokenizer:
    # Unigram pieces with log-probability scores: the three T5 specials, the word pieces ("▁red"),
    # then single characters so any text tokenises.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0) for w in WORDS]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz,."]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def write_wan(folder: Path, seed: int = 0, shift: float = 7.0, ti2v: bool = False) -> Path:
    """ti2v: Wan2.2-TI2V-5B's kind, as diffusers' Wan2.2 5B tests build it: a VAE compressing
    16x in space (48 latent channels, patchified, residual) and per-token timesteps in the
    pipeline (`expand_timesteps`)."""
    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    if ti2v:
        vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True,
                               patch_size=2, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
                               dim_mult=[1, 1, 1, 1], num_res_blocks=1, scale_factor_spatial=16,
                               scale_factor_temporal=4, temperal_downsample=[False, True, True])
    else:
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
    torch.manual_seed(seed + 1)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32,
                                               num_layers=2, num_heads=4, relative_attention_num_buckets=8))
    torch.manual_seed(seed + 2)
    z = vae.config.z_dim
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=z, out_channels=z, text_dim=32, freq_dim=256,
                                        ffn_dim=32, num_layers=2, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                expand_timesteps=ti2v).save_pretrained(folder)
    return folder
