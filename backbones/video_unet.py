"""Adapter for diffusers' video UNets: `UNet3DConditionModel` (ModelScope text-to-video and our
tiny build) and `UNetMotionModel` (AnimateDiff: an image UNet plus motion modules). Both take
latents `(B, C, T, h, w)` and CLIP text embeddings; frames are decoded one by one by a 2D VAE.

Built objects come in; nothing here downloads or reads config files, so the same adapter serves
random tiny weights in tests and real checkpoints in training.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch import nn
from torch.utils.checkpoint import checkpoint

from backbones.ddpm import DDPMProcess
from backbones.lora import PeftLora, add_lora

# ddim: DDIM (eta > 0 adds noise); dpmsolver: DPM-Solver++ multistep (VADER's ModelScope
# default); euler: Euler discrete, which AnimateDiff-Lightning's few-step modules were distilled for.
SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}
# How the UNet's and the VAE's attention layers compute: sdpa is PyTorch's fused
# scaled_dot_product_attention (diffusers' default; flash / memory-efficient kernels on a GPU);
# eager is matmul + softmax with the attention matrix held in memory, to compare or debug with.
ATTENTION = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}


def check_scheduler(scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")


def check_attention(attention: str) -> None:
    if attention not in ATTENTION:
        raise ValueError(f"backbone.attention={attention!r}: choose one of {sorted(ATTENTION)} "
                         "(sdpa: fused scaled_dot_product_attention, eager: matmul and softmax)")


def checkpoint_layers(unet: nn.Module) -> int:
    """Wrap the forward of every layer inside the UNet's down, mid and up blocks (resnets,
    spatial and temporal attention and convolutions, motion modules, samplers) in non-reentrant
    checkpointing while gradients are on. Returns how many layers were wrapped."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    layers = [layer for block in blocks if block is not None for child in block.children()
              if isinstance(child, nn.ModuleList) for layer in child]
    for layer in layers:
        layer.forward = _checkpointed(layer.forward)
    return len(layers)


def decode_checkpointed(decode, z: torch.Tensor, enabled: bool) -> torch.Tensor:
    """`decode(z)`, under non-reentrant checkpointing when `enabled` and `z` carries gradients:
    the decoder's activations are then recomputed in backward instead of kept."""
    if enabled and z.requires_grad:
        return checkpoint(decode, z, use_reentrant=False)
    return decode(z)


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run


class VideoUNetBackbone(DDPMProcess, PeftLora):
    """Prompts -> CLIP embeddings -> video UNet denoiser -> VAE decode, frame by frame."""

    lora_prefix = "unet"  # LoRA keys, as diffusers' load_lora_weights reads them (backbones/lora.py)

    def __init__(self, name: str, unet: nn.Module, vae: AutoencoderKL, text_encoder: nn.Module,
                 tokenizer: Any, scheduler_config: dict[str, Any], scheduler: str = "ddim",
                 scheduler_overrides: dict[str, Any] | None = None,
                 lora_rank: int = 8, lora_alpha: float | None = None,
                 lora_target_modules: list[str] | None = None, decode_chunk: int = 4,
                 gradient_checkpointing: bool = True, text_per_frame: bool = False,
                 attention: str = "sdpa", checkpoint_blocks: bool = False,
                 lora_dropout: float = 0.0):
        check_scheduler(scheduler)
        check_attention(attention)
        self.name = name
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler_cls = SCHEDULERS[scheduler]
        # A checkpoint's scheduler_config.json, then the settings this backbone needs on top
        # (AnimateDiff's linear betas, Lightning's trailing timesteps).
        self.scheduler_config = {**dict(scheduler_config), **dict(scheduler_overrides or {})}
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.decode_chunk = decode_chunk
        self._empty_cache: tuple[Any, dict[int, torch.Tensor]] = (None, {})  # see _empty_prompts
        # UNetMotionModel wants one text embedding per frame (AnimateDiffPipeline repeats them);
        # UNet3DConditionModel repeats them itself.
        self.text_per_frame = text_per_frame
        # Recorded before LoRA is added: LoRA parameters are float32 whatever the frozen dtype.
        self.weight_dtype = next(unet.parameters()).dtype
        self.gradient_checkpointing = gradient_checkpointing
        # Non-reentrant checkpointing of each layer of the UNet's blocks: a step with gradients
        # then holds one layer's activations at a time instead of the whole UNet's, at the same
        # compute (the sampler stops checkpointing the step as a whole). Our own wrapper, since
        # diffusers 0.42's UNet3DConditionModel refuses `enable_gradient_checkpointing`.
        self.checkpoint_blocks = checkpoint_blocks
        if checkpoint_blocks:
            checkpoint_layers(unet)
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        # Processors only compute; the projections (and the LoRA layers peft puts there) stay.
        for module in (unet, vae):
            module.set_attn_processor(ATTENTION[attention]())
        self.lora_config = add_lora(name, self.unet, lora_rank, lora_alpha, lora_target_modules, lora_dropout)

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

    def to(self, device: torch.device | str) -> "VideoUNetBackbone":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    # --- model calls -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP embeddings of `prompts`. All-empty prompts (guidance's unconditional half, asked
        for by every sampler call) come from a cache; callers must not modify what is returned."""
        if prompts and all(p == "" for p in prompts):
            return self._empty_prompts(len(prompts))
        return self._encode(prompts)

    def _empty_prompts(self, n: int) -> torch.Tensor:
        # Encoded once per batch size (not one row repeated: a batch of one may round
        # differently), and kept while the text encoder's weights are the same tensors, on the
        # same device, in the same dtype, unmodified in place (`_version` counts in-place
        # writes, e.g. load_state_dict). Never cached while the text encoder is trainable.
        params = list(self.text_encoder.parameters())
        if any(p.requires_grad for p in params):
            return self._encode([""] * n)
        state = (params[0].device, params[0].dtype, tuple((p.data_ptr(), p._version) for p in params))
        if self._empty_cache[0] != state:
            self._empty_cache = (state, {})
        cached = self._empty_cache[1]
        if n not in cached:
            with torch.inference_mode(False):  # a cached inference tensor could not be saved for backward
                cached[n] = self._encode([""] * n)
        return cached[n]

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        # Exactly the diffusers pipelines' `encode_prompt`: pad to the tokenizer's maximum, and
        # pass the attention mask only to encoders configured to use one.
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = ids.attention_mask.to(self.device)
        return self.text_encoder(ids.input_ids.to(self.device), attention_mask=mask)[0]

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        # The frozen weights may be fp16/bf16 while the sampler keeps latents in float32; the
        # scheduler arithmetic stays in float32 and only the network runs in the weights' dtype.
        dtype = self.weight_dtype
        if self.text_per_frame:
            cond = cond.repeat_interleave(latents.shape[2], dim=0)
        out = model(latents.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
        return out.to(latents.dtype)

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
            chunks.append(decode_checkpointed(self._decode_chunk, part, self.gradient_checkpointing))
        frames = torch.cat(chunks).float().reshape(b, t, -1, *chunks[0].shape[-2:])
        return (frames / 2 + 0.5).clamp(0, 1)

    def _decode_chunk(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    # --- training on data (SFT, DPO): the inverse of decode, and the forward process --------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents `(B, C, T, h, w)` of frames `(B, T, C, H, W)` in [0, 1], scaled as `decode`
        takes them: the VAE posterior's mean (deterministic, so a cache holds one value per
        clip), or a draw from it with `generator`. The frozen VAE is never differentiated here."""
        b, t = frames.shape[:2]
        flat = (frames.flatten(0, 1) * 2 - 1).to(self.vae.device, self.vae.dtype)
        parts = []
        for chunk in flat.split(self.decode_chunk):
            posterior = self.vae.encode(chunk).latent_dist
            parts.append(posterior.mean if generator is None else posterior.sample(generator))
        z = torch.cat(parts).float() * self.vae.config.scaling_factor
        return z.reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    def make_scheduler(self) -> Any:
        return self.scheduler_cls.from_config(self.scheduler_config)

    # --- LoRA ------------------------------------------------------------------------------
    def trainable_module(self) -> nn.Module:
        return self.unet
