"""`backbone=cogvideox`: CogVideoX text-to-video (THUDM/CogVideoX-2b, THUDM/CogVideoX-5b, and
checkpoints in the same diffusers layout) as diffusers' CogVideoXPipeline runs it: a
CogVideoXTransformer3DModel predicting v, the causal 3D VAE AutoencoderKLCogVideoX (4x in time,
8x in space, latents scaled by its `scaling_factor`), T5 embeddings of prompts padded to the
transformer's text length (226 tokens, no attention mask, as the pipeline encodes them), and a
DDIM schedule on CogVideoX's shifted, zero-terminal-SNR noise levels.

Layout: the transformer takes latents (B, T, C, h, w); the protocol's latents are (B, C, T, h, w)
like every backbone's, and `predict` permutes at its boundary, so samplers, windows and rewards
never see the difference. A video of F = 8k + 1 frames has (F − 1)/4 + 1 latent frames (odd:
see Decoding).

Sampling: the DDIM step CogVideoXDDIMScheduler takes (eta = 0) is DDIM's; `make_scheduler`
returns diffusers' DDIMScheduler carrying CogVideoX's own noise levels (`alphas_cumprod` of
CogVideoXDDIMScheduler: the SNR shift, then the zero-terminal-SNR rescale), which gives the same
steps (tests/test_cogvideox.py: parity with CogVideoXPipeline) and also DDIM with eta > 0, the
step GRPO's stochastic sampler needs. The 5B ships CogVideoXDPMScheduler, a stochastic
DPM-Solver++ whose step draws its own noise; we sample the 5B with DDIM on the same schedule.

Decoding: the VAE decodes latent frames in chunks of two with a causal cache, the first chunk
taking three when the count is odd; an even count comes out as two frames per latent frame, not
4k + 1, so videos have an odd number of latent frames: num_frames = 8k + 1 (49 as released). A
prefix of the latents that holds the first chunk and has the same parity as the whole has the
same chunk boundaries, so its frames equal the same frames of a whole decode (exact; any other
prefix is not: up to 0.8 apart on the tiny build). `decode` with `frame_index` therefore decodes
the shortest odd prefix of at least three latent frames reaching the last frame asked for
(latent frame 0 is video frame 0; latent frame k >= 1 is frames 4k − 3 .. 4k), then picks the
frames (tests/test_cogvideox.py checks both).
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel,
                       DDIMScheduler)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from torch import nn

from backbones.ddpm import DDPMProcess
from backbones.dit import TransformerBackbone, check_frames_count, load_parts
from backbones.video_unet import decode_checkpointed


class ZeroSNRDDIMScheduler(DDIMScheduler):
    """DDIMScheduler whose step with eta > 0 stays finite at zero terminal SNR. There the first
    step's std² is eta² (1 − ᾱ_prev), and at eta = 1 rounding can take 1 − ᾱ_prev − std², under the
    step's square root, below 0 (a NaN at 3, 6, 9 or 15 steps on CogVideoX's schedule). The
    variance is lowered by the few float steps that keep it at or above 0."""

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        variance = super()._get_variance(timestep, prev_timestep)
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        while (variance ** 0.5) ** 2 > 1 - alpha_prev:
            variance = torch.nextafter(variance, torch.zeros_like(variance))
        return variance


def shifted_ddim(config: dict[str, Any], levels: Any = None) -> DDIMScheduler:
    """DDIMScheduler on CogVideoX's noise levels (see the module docstring); `levels`: a
    CogVideoXDDIMScheduler built from `config` already."""
    levels = levels or CogVideoXDDIMScheduler.from_config(config)
    ddim = ZeroSNRDDIMScheduler.from_config({k: v for k, v in config.items() if k != "snr_shift_scale"})
    # float32 as DDIMScheduler keeps its own (CogVideoX computes them in float64)
    ddim.alphas_cumprod = levels.alphas_cumprod.float()
    ddim.final_alpha_cumprod = levels.final_alpha_cumprod.float()
    return ddim


class CogVideoXBackbone(DDPMProcess, TransformerBackbone):
    """Prompts -> T5 embeddings -> CogVideoX transformer (v) -> causal 3D VAE."""

    def __init__(self, name: str, transformer: nn.Module, vae: AutoencoderKLCogVideoX,
                 text_encoder: nn.Module, tokenizer: Any, scheduler_config: dict[str, Any],
                 lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
                 gradient_checkpointing: bool = True, checkpoint_blocks: bool = True,
                 text_encoder_offload: bool = True, prompt_cache_size: int = 256) -> None:
        config = transformer.config
        if config.patch_size_t is not None:
            raise ValueError("this checkpoint is CogVideoX 1.5 (its transformer has patch_size_t); "
                             "backbone=cogvideox runs CogVideoX 1.0 (THUDM/CogVideoX-2b, -5b)")
        self.name = name
        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        self.scheduler_config = dict(scheduler_config)
        # The noise levels never change, a scheduler's state does: built once, a scheduler per call.
        self._levels = CogVideoXDDIMScheduler.from_config(self.scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "v_prediction")
        self._setup(lora_rank, lora_alpha, lora_target_modules, lora_dropout, gradient_checkpointing,
                    checkpoint_blocks, text_encoder_offload, prompt_cache_size)
        self.temporal = vae.config.temporal_compression_ratio
        self.spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = vae.config.scaling_factor
        self._rotary: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    # --- sizes -----------------------------------------------------------------------------
    def check_video(self, num_frames: int, height: int, width: int) -> None:
        check_frames_count(num_frames, self.temporal)
        if self.latent_frames(num_frames) % 2 == 0:  # see the module docstring
            raise ValueError(f"num_frames={num_frames}: CogVideoX's VAE turns an even number of latent "
                             f"frames into two frames each, so videos have {2 * self.temporal}k + 1 "
                             f"frames (e.g. num_frames={num_frames + self.temporal}; 49 as released)")
        self.check_size(height, width, self.transformer.config.patch_size, " (CogVideoX: 480x720)")

    # --- model calls -----------------------------------------------------------------------
    def _encode_text(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """T5 embeddings of prompts padded to the transformer's text length; CogVideoXPipeline
        passes no attention mask, so neither do we."""
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, add_special_tokens=True,
                             max_length=self.transformer.config.max_text_seq_length, return_tensors="pt")
        return self.text_encoder(ids.input_ids.to(device))[0]

    def rotary(self, frames: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The 5B's 3D rotary embeddings for `frames` latent frames of h x w latents, as
        CogVideoXPipeline makes them (the 2B uses sin-cos positions inside the transformer)."""
        config = self.transformer.config
        if not config.use_rotary_positional_embeddings:
            return None
        key = (frames, h, w, str(device))
        if key not in self._rotary:
            p = config.patch_size
            grid = (h // p, w // p)
            crops = get_resize_crop_region_for_grid(grid, config.sample_width // p, config.sample_height // p)
            self._rotary[key] = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim,
                                                        crops_coords=crops, grid_size=grid,
                                                        temporal_size=frames, device=device)
        return self._rotary[key]

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        b, _, frames, h, w = latents.shape
        t = t.reshape(-1).to(latents.device)
        t = t.expand(b) if t.numel() == 1 else t
        out = model(hidden_states=latents.permute(0, 2, 1, 3, 4).to(self.weight_dtype),
                    encoder_hidden_states=cond.to(self.weight_dtype), timestep=t,
                    image_rotary_emb=self.rotary(frames, h, w, latents.device), return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).to(latents.dtype)

    def decode(self, latents: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B, F, 3, H, W) in [0, 1]; with `frame_index`, the shortest odd latent prefix of
        at least three frames reaching the last frame asked for is decoded (exact, see the module
        docstring)."""
        z = latents.to(self.vae.dtype) / self.scaling_factor
        if frame_index is not None:
            needed = self.latents_reaching(frame_index)
            z = z[:, :, :max(needed + (needed + 1) % 2, min(3, z.shape[2]))]
        video = decode_checkpointed(self._decode, z, self.gradient_checkpointing)
        frames = (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)
        return frames if frame_index is None else frames[:, frame_index.to(frames.device)]

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of frames (B, F, 3, H, W) in [0, 1]: the posterior's mean, or a draw."""
        x = (frames.permute(0, 2, 1, 3, 4) * 2 - 1).to(self.vae.device, self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator)
        return z.float() * self.scaling_factor

    def make_scheduler(self) -> DDIMScheduler:
        return shifted_ddim(self.scheduler_config, self._levels)


def cogvideox(pretrained: str = "THUDM/CogVideoX-2b", revision: str | None = None,
              transformer: str | None = None, vae: str | None = None, text_encoder: str | None = None,
              transformer_dtype: str = "bf16", vae_dtype: str = "bf16", text_encoder_dtype: str = "bf16",
              lora_rank: int = 16, lora_alpha: float | None = None,
              lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
              gradient_checkpointing: bool = True, checkpoint_blocks: bool = True,
              text_encoder_offload: bool = True, prompt_cache_size: int = 256) -> CogVideoXBackbone:
    """CogVideoX from a hub id or a local folder in the diffusers layout (transformer/, vae/,
    text_encoder/, tokenizer/, scheduler/); each part can come from its own folder instead."""
    from transformers import T5EncoderModel

    parts = load_parts(pretrained, revision, {"transformer": transformer, "vae": vae, "text_encoder": text_encoder},
                       {"transformer": CogVideoXTransformer3DModel, "vae": AutoencoderKLCogVideoX,
                        "text_encoder": T5EncoderModel},
                       {"transformer": transformer_dtype, "vae": vae_dtype, "text_encoder": text_encoder_dtype})
    return CogVideoXBackbone(
        name="cogvideox", **parts, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules, lora_dropout=lora_dropout,
        gradient_checkpointing=gradient_checkpointing, checkpoint_blocks=checkpoint_blocks,
        text_encoder_offload=text_encoder_offload, prompt_cache_size=prompt_cache_size)
