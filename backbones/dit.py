"""What the diffusion-transformer backbones (Wan, CogVideoX) share: LoRA on the transformer's
attention projections, the frozen parts, per-block gradient checkpointing, and a large T5 text
encoder that runs once per prompt and holds no accelerator memory during a training step.

Text encoders: umT5-XXL (Wan) and T5-XXL (CogVideoX) are 5.7 B and 4.8 B parameters, more than
the 1.3 B / 2 B transformers they condition. Embeddings are kept per prompt in an LRU cache on the
CPU (`prompt_cache_size` prompts), so a prompt is encoded once however often it is sampled, and
with `text_encoder_offload` the encoder lives on the CPU and visits the accelerator only to encode
prompts the cache does not hold (as diffusers' model CPU offload moves whole models), so a training
step never has its weights on the GPU.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from backbones.loading import (check_sources, load_part, load_scheduler_config, parse_dtype, part_source,
                               text_vae_sources)
from backbones.lora import PeftLora, add_lora

def check_frames_count(num_frames: int, temporal: int) -> None:
    if num_frames < 1 or (num_frames - 1) % temporal:
        k = max(1, round((num_frames - 1) / temporal))
        raise ValueError(f"num_frames={num_frames}: this VAE compresses time by {temporal}, so a "
                         f"video has {temporal}k + 1 frames (e.g. num_frames={temporal * k + 1})")


class TransformerBackbone(PeftLora):
    """Set up by `_setup`; a subclass adds the model calls (`check_video`, `_encode_text`,
    `predict`, `decode`, ...) and has `transformer`, `vae`, `text_encoder`, `tokenizer`, `temporal`
    and `spatial`."""

    lora_prefix = "transformer"  # LoRA keys, as the diffusers pipelines' load_lora_weights read them
    checkpoint_blocks = False

    def _setup(self, lora_rank: int, lora_alpha: float | None, lora_target_modules: list[str] | None,
               lora_dropout: float, gradient_checkpointing: bool, checkpoint_blocks: bool,
               text_encoder_offload: bool, prompt_cache_size: int) -> None:
        if prompt_cache_size < 0:
            raise ValueError(f"backbone.prompt_cache_size={prompt_cache_size}: use 0 (no cache) or more")
        self.gradient_checkpointing = gradient_checkpointing
        # diffusers' own answer: the first parameter may sit in a module it keeps in float32
        # (Wan's scale_shift_table), which is not the dtype the transformer's inputs must have.
        self.weight_dtype = self.transformer.dtype
        for module in (self.transformer, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.lora_config = add_lora(self.name, self.transformer, lora_rank, lora_alpha, lora_target_modules,
                                    lora_dropout)
        if checkpoint_blocks and gradient_checkpointing:
            # diffusers checkpoints each transformer block (non-reentrant) while gradients are on;
            # the sampler then leaves whole steps unwrapped (`checkpoint_blocks` in the protocol).
            self.transformer.enable_gradient_checkpointing()
            self.checkpoint_blocks = True
        self.text_encoder_offload = text_encoder_offload
        self.prompt_cache_size = prompt_cache_size
        self._prompts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.text_encoder_calls = 0  # prompts encoded, for tests and the log

    # --- devices ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: torch.device | str) -> "TransformerBackbone":
        self.transformer.to(device)
        self.vae.to(device)
        if not self.text_encoder_offload:
            self.text_encoder.to(device)
        return self

    @contextmanager
    def _text_encoder_on(self, device: torch.device) -> Iterator[None]:
        home = next(self.text_encoder.parameters()).device
        if not self.text_encoder_offload or home == device:
            yield
            return
        self.text_encoder.to(device)
        try:
            yield
        finally:
            self.text_encoder.to(home)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # give the encoder's blocks back before the step

    # --- text -------------------------------------------------------------------------------
    def _encode_text(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        raise NotImplementedError  # each backbone tokenises and encodes as its pipeline does

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, L, D) embeddings, each prompt's taken from the cache or encoded once."""
        device = self.device
        if self.prompt_cache_size == 0:
            self.text_encoder_calls += len(prompts)
            with self._text_encoder_on(device):
                return self._encode_text(list(prompts), device)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompts]
        if missing:
            self.text_encoder_calls += len(missing)
            with self._text_encoder_on(device):
                embeds = self._encode_text(missing, device)
            for p, e in zip(missing, embeds):
                self._prompts[p] = e.cpu()
        for p in prompts:
            self._prompts.move_to_end(p)
        out = torch.stack([self._prompts[p] for p in prompts]).to(device)
        while len(self._prompts) > self.prompt_cache_size:
            self._prompts.popitem(last=False)
        return out

    # --- LoRA -------------------------------------------------------------------------------
    def trainable_module(self) -> nn.Module:
        return self.transformer

    # --- sizes ------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal + 1

    def latents_reaching(self, frame_index: torch.Tensor) -> int:
        """How many latent frames reach the last video frame in `frame_index`: latent frame 0 is
        video frame 0, latent frame k >= 1 frames temporal (k − 1) + 1 .. temporal k."""
        return (int(frame_index.max()) + self.temporal - 1) // self.temporal + 1

    def check_size(self, height: int, width: int, patch: int, example: str = "") -> None:
        """Height and width multiples of the VAE's spatial factor times the transformer's patch."""
        m = self.spatial * patch
        if height % m or width % m or height <= 0 or width <= 0:
            raise ValueError(f"backbone {self.name!r} cannot make {height}x{width} videos: height "
                             f"and width must be positive multiples of {m}{example}")

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        self.check_video(num_frames, height, width)
        return (batch, self.transformer.config.in_channels, self.latent_frames(num_frames),
                height // self.spatial, width // self.spatial)


def load_parts(pretrained: str, revision: str | None, folders: dict[str, str | None],
               classes: dict[str, Any], dtypes: dict[str, str],
               check: Callable[[str, str | None], None] | None = None) -> dict[str, Any]:
    """Transformer, VAE, text encoder, tokenizer and scheduler config from a hub id or a folder in
    the diffusers layout (transformer/, vae/, text_encoder/, tokenizer/, scheduler/), each of the
    first three from its own folder when `folders` names one. Every part is checked reachable
    before any weight loads; `check` then looks at the whole checkpoint (e.g. its model_index)."""
    from transformers import AutoTokenizer

    sources = {"transformer": part_source("backbone.transformer", folders["transformer"], pretrained,
                                          "transformer", revision=revision),
               **text_vae_sources(pretrained, revision, folders["vae"], folders["text_encoder"])}
    check_sources(list(sources.values()))
    if check is not None:
        check(pretrained, revision)
    parts = {name: load_part(classes[name], sources[name], parse_dtype(dtypes[name], f"backbone.{name}_dtype"))
             for name in ("transformer", "vae", "text_encoder")}
    return {**parts, "tokenizer": load_part(AutoTokenizer, sources["tokenizer"]),
            "scheduler_config": load_scheduler_config(sources["scheduler"])}
