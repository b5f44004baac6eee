"""`backbone=videocrafter2`: VideoCrafter2 text-to-video (VideoCrafter/VideoCrafter2, `model.ckpt`
in the LDM layout), the backbone VADER reports most results on. Research notes with every source:
docs/design/videocrafter2.md.

- UNet: diffusers' UNet3DConditionModel with ModelScope's configuration, plus VideoCrafter's frame
  rate conditioning (`FpsUNet3DConditionModel`: the fps embedded like a timestep and added to the
  time embedding). The official UNet's 1,484 tensors map one to one onto it
  (backbones/videocrafter2_convert.py).
- VAE and text encoder: the SD VAE and the OpenCLIP ViT-H text tower run to its penultimate layer
  (CLIPTextModel, 23 layers), ModelScope's configurations; the tokenizer is OpenCLIP's BPE (any
  CLIP tokenizer folder, by default ModelScope's), padding with token 0 as open_clip.tokenize does.
- Sampling: VideoCrafter's DDIM rescales the predicted x0 by `scale_arr` (the model was trained on
  x_t = sqrt(ᾱ_t) s_t x0 + sqrt(1 − ᾱ_t) ε with s_t falling from 1 to 0.7 over the first 400
  timesteps): `ScaledDDIMScheduler`. Its timesteps equal VideoCrafter's when the step count divides
  1000 (other counts: VideoCrafter makes one more step).

Licence: the code is Apache 2.0 with an added clause limiting use to research, not commercial
purposes (AILab-CVC/VideoCrafter's License); the Hub tags the weights apache-2.0. Read it as
research only.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from backbones.video_unet import VideoUNetBackbone, check_attention

# configs/inference_t2v_512_v2.0.yaml: use_scale true, scale_b 0.7; ddpm3d.py: scale_a 1, the ramp
# over mid_step = 400 timesteps, then scale_b (docs/design/videocrafter2.md section 5).
SCALE_B, SCALE_RAMP = 0.7, 400


class FpsUNet3DConditionModel(UNet3DConditionModel):
    """UNet3DConditionModel plus VideoCrafter's fps conditioning: `fps_embedding(time_proj(fps))`
    added to the time embedding, before it is repeated over frames. `fps` is an attribute (the
    same for every video: VADER trains at 24)."""

    @functools.wraps(UNet3DConditionModel.__init__)  # diffusers reads the config from the signature
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dim = self.config.block_out_channels[0]
        self.fps_embedding = TimestepEmbedding(dim, dim * 4)
        self.fps = 24
        self.time_embedding.register_forward_hook(self._add_fps)

    def _add_fps(self, module: torch.nn.Module, args: Any, emb: torch.Tensor) -> torch.Tensor:
        fps = torch.full((emb.shape[0],), float(self.fps), device=emb.device)
        weight = self.fps_embedding.linear_1.weight
        return emb + self.fps_embedding(self.time_proj(fps).to(weight.dtype)).to(emb.dtype)


@functools.lru_cache
def scale_levels(num_train_timesteps: int = 1000) -> torch.Tensor:
    """s_t for t = 0 .. num_train_timesteps − 1: 1 falling linearly to SCALE_B over SCALE_RAMP
    timesteps, then SCALE_B. Built once per length (callers must not modify it)."""
    ramp = torch.linspace(1.0, SCALE_B, SCALE_RAMP, dtype=torch.float64)
    return torch.cat([ramp, torch.full((max(0, num_train_timesteps - SCALE_RAMP),), SCALE_B,
                                       dtype=torch.float64)])[:num_train_timesteps].float()


class ScaledDDIMScheduler(DDIMScheduler):
    """DDIMScheduler for the scaled forward process: its step, then sqrt(ᾱ_prev)(s_prev/s_t − 1) x̂0
    added, which makes the step's x0 term sqrt(ᾱ_prev) s_prev x̂0/s_t as VideoCrafter's sampler has
    it (lvdm/models/samplers/ddim.py); the returned x0 is x̂0 / s_t. The last step's s_prev is
    s_0 = 1."""

    @property
    def scale_levels(self) -> torch.Tensor:
        return scale_levels(self.config.num_train_timesteps)

    def scales(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_t, s_prev) for timesteps `t` (a tensor), at the set step count."""
        t = t.cpu().long()
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        levels = self.scale_levels
        return levels[t], torch.where(prev >= 0, levels[prev.clamp(min=0)], levels[0])

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(ᾱ_t) s_t x0 + sqrt(1 − ᾱ_t) ε."""
        s = self.scale_levels[timesteps.cpu().long()].to(original_samples)
        s = s.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return super().add_noise(original_samples * s, noise, timesteps)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Any = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> Any:
        out = super().step(model_output, timestep, sample, eta=eta,
                           use_clipped_model_output=use_clipped_model_output, generator=generator,
                           variance_noise=variance_noise, return_dict=True)
        t = torch.as_tensor(timestep).reshape(1)
        s, s_prev = (float(v) for v in self.scales(t))
        prev = int(t) - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        x0 = out.pred_original_sample
        prev_sample = out.prev_sample + alpha_prev ** 0.5 * (s_prev / s - 1) * x0
        if not return_dict:
            return prev_sample, x0 / s
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0 / s)


class VideoCrafter2Backbone(VideoUNetBackbone):
    """The UNet backbone with VideoCrafter's scaled forward process for SFT and DPO."""

    def make_scheduler(self) -> ScaledDDIMScheduler:
        return ScaledDDIMScheduler.from_config(self.scheduler_config)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sqrt(ᾱ_t) s_t x0 + sqrt(1 − ᾱ_t) ε: the process VideoCrafter2 was trained on."""
        s = scale_levels(self.scheduler_config.get("num_train_timesteps", 1000))[t.cpu().long()]
        return super().add_noise(latents * s.to(latents).reshape(-1, *([1] * (latents.ndim - 1))), noise, t)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type != "epsilon":  # v has no meaning under the scaled process
            raise ValueError(f"backbone {self.name!r} predicts the noise (epsilon) of its scaled forward "
                             f"process; prediction_type={self.prediction_type!r} has no target here")
        return noise


def config(name: str) -> dict[str, Any]:
    """A sourced configuration of backbones/configs/ as constructor arguments."""
    from backbones.sizes import load_config

    return {k: v for k, v in load_config(name).items() if k != "_class_name"}


def build_parts(unet_config: dict[str, Any], vae_config: dict[str, Any], text_config: dict[str, Any],
                state: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype]) -> dict[str, Any]:
    """The three models from their configurations, loaded from an official checkpoint's state
    dict (every key converted or knowingly dropped, every weight of ours filled)."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel

    from backbones.videocrafter2_convert import convert_checkpoint

    with init_empty_weights(include_buffers=False):  # weights come from the checkpoint; buffers are built
        parts = {"unet": FpsUNet3DConditionModel(**unet_config), "vae": AutoencoderKL(**vae_config),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**text_config))}
    converted = convert_checkpoint(state, vae_config, parts["text_encoder"],
                                   unet_config.get("layers_per_block", 2))
    for name, module in parts.items():
        missing, unexpected = module.load_state_dict(converted[name], strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(f"backbone.checkpoint: the {name} does not fit VideoCrafter2's architecture: "
                             f"{len(missing)} weights missing (e.g. {missing[:2]}), {len(unexpected)} "
                             f"unexpected (e.g. {unexpected[:2]})")
        # nn.Module's own `to`: diffusers' warns about fp32-kept modules, which these have none of
        torch.nn.Module.to(module, dtypes[name])
    return parts


def videocrafter2(checkpoint: str = "VideoCrafter/VideoCrafter2", filename: str = "model.ckpt",
                  revision: str | None = None, tokenizer: str = "ali-vilab/text-to-video-ms-1.7b",
                  architecture: str | None = None, fps: int = 24, unet_dtype: str = "bf16", vae_dtype: str = "bf16",
                  text_encoder_dtype: str = "bf16", lora_rank: int = 16, lora_alpha: float | None = None,
                  lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
                  decode_chunk: int = 1, gradient_checkpointing: bool = True, attention: str = "sdpa",
                  checkpoint_blocks: bool = True) -> VideoCrafter2Backbone:
    """VideoCrafter2 from the official `model.ckpt` (a hub id holding it, or a local folder or
    file) and a CLIP tokenizer folder (`tokenizer/` inside `tokenizer`, or the folder itself).
    `architecture`: a JSON file {"unet": ..., "vae": ..., "text_encoder": ...} of the three
    configurations, for a checkpoint of another size (the tests' tiny one); null: the published
    architecture (ModelScope's configurations, docs/design/videocrafter2.md section 3)."""
    from transformers import CLIPTokenizer

    from backbones.loading import Source, check_sources, fetch_file, load_part, parse_dtype
    from backbones.videocrafter2_convert import state_dict_of

    check_attention(attention)
    if fps <= 0:
        raise ValueError(f"backbone.fps={fps}: the frame rate the model is told (VADER trains at 24)")
    path = Path(checkpoint).expanduser()
    ckpt = Source("backbone.checkpoint", str(path.parent) if path.is_file() else checkpoint,
                  path.name if path.is_file() else filename, None, revision, weights=False)
    words = Source("backbone.tokenizer", tokenizer, "tokenizer_config.json",
                   None if (Path(tokenizer).expanduser() / "tokenizer_config.json").exists() else "tokenizer",
                   None, weights=False)
    check_sources([ckpt, words])  # both reachable before the 7 GB file is read
    if architecture and not Path(architecture).expanduser().is_file():
        raise FileNotFoundError(f"backbone.architecture={architecture!r}: no such file (a JSON file of "
                                "the unet, vae and text_encoder configurations; null: the published ones)")
    configs = json.loads(Path(architecture).expanduser().read_text()) if architecture else {
        "unet": config("modelscope_unet"), "vae": config("modelscope_vae"),
        "text_encoder": config("modelscope_text_encoder")}
    dtypes = {"unet": parse_dtype(unet_dtype, "backbone.unet_dtype"),
              "vae": parse_dtype(vae_dtype, "backbone.vae_dtype"),
              "text_encoder": parse_dtype(text_encoder_dtype, "backbone.text_encoder_dtype")}
    try:  # tensors only: a pickle that wants to run code is refused
        loaded = torch.load(fetch_file(ckpt), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"backbone.checkpoint={checkpoint!r}: {ckpt.relative} is not a checkpoint "
                         f"torch can read as tensors ({type(err).__name__}: {str(err)[:200]})") from err
    parts = build_parts(configs["unet"], configs["vae"], configs["text_encoder"], state_dict_of(loaded), dtypes)
    parts["unet"].fps = fps
    tok = load_part(CLIPTokenizer, words)
    tok.pad_token = tok.convert_ids_to_tokens(0)  # open_clip.tokenize pads with id 0
    return VideoCrafter2Backbone(
        name="videocrafter2", **parts, tokenizer=tok, scheduler_config=config("modelscope_scheduler"),
        scheduler="ddim", lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_target_modules=lora_target_modules, lora_dropout=lora_dropout, decode_chunk=decode_chunk,
        gradient_checkpointing=gradient_checkpointing, attention=attention,
        checkpoint_blocks=checkpoint_blocks)
