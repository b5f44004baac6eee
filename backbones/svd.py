"""`backbone=svd`: Stable Video Diffusion image-to-video (stabilityai/stable-video-diffusion-img2vid,
-img2vid-xt, and checkpoints in the same diffusers layout) as StableVideoDiffusionPipeline runs it:
a UNetSpatioTemporalConditionModel predicting v on EDM noise levels (EulerDiscreteScheduler with
Karras sigmas and continuous timesteps), conditioned on the first frame twice (its CLIP image
embedding through cross-attention, its VAE latents concatenated to every frame's channels) and on
`added_time_ids` (fps − 1, motion bucket, noise augmentation), decoded by the temporal VAE decoder.

Conditioning: prompts are image prompts (vader/data/image_prompts.py: a caption string carrying
`.image`); the empty prompt, which the sampler asks for as the unconditional input, gets the
pipeline's negative conditioning (zero image embedding, zero image latents). `encode_prompts`
returns an opaque tensor per video (the image embedding, then the image's number in this
backbone's table); `predict` computes the image latents at the video's size once per image and
size (the first frame resized to the video, noise-augmented with a draw seeded by the image, then
the VAE posterior's mode, as the pipeline does).

Guidance is the pipeline's per-frame ramp: linear from `min_guidance_scale` on the first frame to
`guidance_scale` on the last (`guidance_weights`, read by the samplers).

Decoding: the temporal decoder's layers see the frames decoded together (`decode_chunk`, default:
the whole video, as the pipeline with decode_chunk_size = num_frames), so a frame depends on its
chunk; `decode` decodes whole chunks and then picks the frames asked for (exact: the frames of a
whole decode).

Training on data (SFT, DPO; `dataset=image_video`, or any clip dataset, whose first frames then
condition): SVD was trained with EDM (Karras et al. 2022): noise levels σ with ln σ ~ N(P_mean,
P_std²), the network given c_noise = ln(σ)/4 and the input (x0 + σε)/sqrt(σ² + 1), the loss
λ(σ)·|D(x) − x0|² with λ = (σ² + 1)/σ². Written as our protocol's forward process that is
v-prediction on ᾱ = 1/(1 + σ²): `add_noise` gives the scaled input, `training_target` the v that
makes D(x) = x0, and the EDM weighting is exactly the unweighted error on v (λ·c_out² = 1), so
the shared denoising loss trains SVD as its fine-tuning scripts do. `training_timestep` draws
c_noise with P_mean = 0.7, P_std = 1.6, the values of the public SVD fine-tuning scripts
(pixeli99/SVD_Xtend `train_svd.py`, `rand_log_normal(loc=0.7, scale=1.6)`); the SVD paper's own
fine-tuning values were not found. The first frame's latents get the pipeline's fixed
`noise_aug_strength` (SVD_Xtend draws it per sample), so training sees what sampling sees.

GRPO: the stochastic sampler's EDM step (vader.sampling.stochastic.EulerAncestralStep).
Not built: long videos on SVD (its first-frame conditioning has no window rule).
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Any

import torch
from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler,
                       UNetSpatioTemporalConditionModel)
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from diffusers.video_processor import VideoProcessor
from torch import nn

from backbones.lora import PeftLora, add_lora
from backbones.video_unet import checkpoint_layers, decode_checkpointed

PIXEL_IMAGES = 256  # first frames held in memory (training samples' own), least recently used dropped


class SVDBackbone(PeftLora):
    """First frame -> CLIP image embedding + image latents -> spatio-temporal UNet (v) -> temporal VAE."""

    prediction_type = "v_prediction"
    lora_prefix = "unet"
    conditioning = "image"  # the data stream hands its samples' first frames (vader.data.stream)
    no_windows = ("it conditions every frame on the first frame and ramps guidance over the frames it "
                  "sees, so each window would restart both")

    def __init__(self, name: str, unet: nn.Module, vae: AutoencoderKLTemporalDecoder, image_encoder: nn.Module,
                 feature_extractor: Any, scheduler_config: dict[str, Any], fps: int = 7,
                 motion_bucket_id: int = 127, noise_aug_strength: float = 0.02, min_guidance_scale: float = 1.0,
                 decode_chunk: int | None = None, train_noise_mean: float = 0.7, train_noise_std: float = 1.6,
                 lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_target_modules: list[str] | None = None, lora_dropout: float = 0.0,
                 gradient_checkpointing: bool = True, checkpoint_blocks: bool = True) -> None:
        self.name, self.unet, self.vae = name, unet, vae
        # Each layer of the UNet's blocks checkpointed on its own (the UNet backbones' wrapper): a
        # step with gradients then holds one layer's activations at a time, not the whole UNet's
        # (diffusers' own SVD checkpointing covers only its resnets).
        self.checkpoint_blocks = checkpoint_blocks and gradient_checkpointing
        if self.checkpoint_blocks:
            checkpoint_layers(unet)
        # The conditioning encoder sits where the text backbones keep theirs (frozen_state_dict).
        self.text_encoder, self.feature_extractor = image_encoder, feature_extractor
        self.scheduler_config = dict(scheduler_config)
        self.time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]  # "conditioned on fps - 1"
        self.noise_aug_strength, self.min_guidance_scale = noise_aug_strength, min_guidance_scale
        self.decode_chunk, self.gradient_checkpointing = decode_chunk, gradient_checkpointing
        if train_noise_std <= 0:
            raise ValueError(f"backbone.train_noise_std={train_noise_std}: use a positive spread of ln σ (SVD: 1.6)")
        self.train_noise_mean, self.train_noise_std = train_noise_mean, train_noise_std
        self.weight_dtype = unet.dtype
        self.spatial = 2 ** (len(vae.config.block_out_channels) - 1)
        self.processor = VideoProcessor(vae_scale_factor=self.spatial)
        # Each first frame gets a number, carried in the conditioning: image name -> number, and
        # back to the name (a path, or "pixels:<name>" for an in-memory frame, whose pixels are kept
        # for a bounded few).
        self._images: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        self._next = 0
        self._pixels: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._latents: dict[tuple[int, int, int], torch.Tensor] = {}
        for module in (unet, vae, image_encoder):
            module.requires_grad_(False)
            module.eval()
        self.lora_config = add_lora(name, self.unet, lora_rank, lora_alpha, lora_target_modules, lora_dropout)

    # --- sizes -----------------------------------------------------------------------------
    def check_video(self, num_frames: int, height: int, width: int) -> None:
        m = self.spatial * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if num_frames < 1 or height % m or width % m or height <= 0 or width <= 0:
            raise ValueError(f"backbone {self.name!r} cannot make {num_frames} frames of {height}x{width}: "
                             f"height and width must be positive multiples of {m} (SVD: 576x1024)")

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        self.check_video(num_frames, height, width)
        return (batch, self.unet.config.out_channels, num_frames, height // self.spatial, width // self.spatial)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> "SVDBackbone":
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        self._latents.clear()
        return self

    # --- conditioning ----------------------------------------------------------------------
    def _number(self, prompt: str) -> int:
        pixels = getattr(prompt, "pixels", None)
        key = prompt.image
        if pixels is not None:
            key, pixels = f"pixels:{prompt.image}", pixels.detach().float().cpu()
            if key in self._images and not torch.equal(self._pixels[self._images[key]], pixels):
                del self._images[key]  # the name came back with other pixels: a new image, a new number
        if key not in self._images:
            number = self._images[key] = self._next  # never reused, so a stale number cannot alias
            self._next += 1
            self._keys[number] = key
            if pixels is not None:
                self._pixels[number] = pixels
        number = self._images[key]
        if number in self._pixels:
            self._pixels.move_to_end(number)
            while len(self._pixels) > PIXEL_IMAGES:  # a sample's frame is used within its step
                old, _ = self._pixels.popitem(last=False)
                name = self._keys.pop(old)
                if self._images.get(name) == old:  # not if the name now stands for newer pixels
                    del self._images[name]
                self._latents = {k: v for k, v in self._latents.items() if k[0] != old}
        return number

    def _pil(self, number: int):
        from PIL import Image

        if number not in self._keys:
            raise KeyError(f"first frame {number} is no longer held (more than {PIXEL_IMAGES} in-memory frames "
                           "since it was encoded); encode its prompt again")
        return Image.open(self._keys[number]).convert("RGB")

    def _source(self, number: int) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1], the first frame of image `number` at its own size."""
        if number in self._pixels:
            return self._pixels[number][None]
        return self.processor.numpy_to_pt(self.processor.pil_to_numpy(self._pil(number)))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, D + 1): each first frame's CLIP image embedding and its number here (−1 and zeros
        for the empty prompt: the unconditional input)."""
        dim = self.text_encoder.config.projection_dim
        rows = []
        for prompt in prompts:
            if prompt == "" and not hasattr(prompt, "image"):
                rows.append(torch.cat([torch.zeros(dim, device=self.device), torch.tensor([-1.0], device=self.device)]))
                continue
            if not hasattr(prompt, "image"):
                raise ValueError(f"backbone {self.name!r} makes videos from a first frame, and prompt {prompt!r} "
                                 "has none; use prompt_fn=images prompt_fn.path=<a folder of first frames>")
            number = self._number(prompt)
            rows.append(torch.cat([self._embed(number), torch.tensor([float(number)], device=self.device)]))
        return torch.stack(rows)

    def _embed(self, number: int) -> torch.Tensor:
        # As StableVideoDiffusionPipeline._encode_image: [0, 1] pixels, antialiased resize to the
        # encoder's size in [-1, 1], the feature extractor's normalisation only.
        image = self._source(number)
        size = self.text_encoder.config.image_size
        image = (_resize_with_antialiasing(image * 2 - 1, (size, size)) + 1) / 2
        pixels = self.feature_extractor(images=image, do_normalize=True, do_center_crop=False, do_resize=False,
                                        do_rescale=False, return_tensors="pt").pixel_values
        encoder = self.text_encoder
        return encoder(pixels.to(self.device, next(encoder.parameters()).dtype)).image_embeds[0].float()

    def _image_latents(self, number: int, height: int, width: int) -> torch.Tensor:
        key = (number, height, width)
        if key not in self._latents:
            if number in self._pixels:  # a training sample's first frame, at the video's size
                image = self.processor.preprocess(self._pixels[number][None], height=height, width=width)
            else:  # as the pipeline: the PIL image resized to the video, then [-1, 1]
                image = self.processor.preprocess(self._pil(number), height=height, width=width)
            # Seeded by the image's name, so an image's conditioning does not depend on which
            # images came before it.
            seed = zlib.crc32(self._keys[number].encode())
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
            image = (image + self.noise_aug_strength * noise).to(self.device, self.vae.dtype)
            with torch.no_grad():
                self._latents[key] = self.vae.encode(image).latent_dist.mode()[0]
        return self._latents[key]

    def guidance_weights(self, guidance_scale: float, like: torch.Tensor) -> torch.Tensor:
        """The pipeline's per-frame guidance: min_guidance_scale on the first frame rising linearly
        to guidance_scale on the last, shaped to broadcast over (B, C, T, h, w)."""
        ramp = torch.linspace(self.min_guidance_scale, guidance_scale, like.shape[2], device=like.device)
        return ramp.to(like.dtype).view(1, 1, -1, 1, 1)

    def predict(self, model: nn.Module, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b, _, frames, h, w = latents.shape
        embeds, numbers = cond[:, :-1].unsqueeze(1), cond[:, -1].round().long().tolist()
        first = torch.stack([self._image_latents(n, h * self.spatial, w * self.spatial) if n >= 0 else
                             torch.zeros(self.vae.config.latent_channels, h, w, device=latents.device)
                             for n in numbers]).to(latents.device, self.weight_dtype)
        x = torch.cat([latents.permute(0, 2, 1, 3, 4).to(self.weight_dtype),
                       first[:, None].expand(-1, frames, -1, -1, -1)], dim=2)
        t = t.reshape(-1).to(latents.device)
        t = t.expand(b) if t.numel() == 1 else t
        ids = torch.tensor([self.time_ids], device=latents.device, dtype=self.weight_dtype).expand(b, -1)
        out = model(x, t, encoder_hidden_states=embeds.to(self.weight_dtype), added_time_ids=ids, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4).to(latents.dtype)

    # --- frames ----------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Frames (B, T, 3, H, W) in [0, 1], each video decoded in chunks of `decode_chunk` frames
        (default: all at once), then the frames asked for."""
        z = latents.permute(0, 2, 1, 3, 4).to(self.vae.dtype) / self.vae.config.scaling_factor
        chunk = self.decode_chunk or z.shape[1]
        videos = [torch.cat([decode_checkpointed(self._decode, piece, self.gradient_checkpointing)
                             for piece in video.split(chunk)]) for video in z]
        frames = (torch.stack(videos).float() / 2 + 0.5).clamp(0, 1)
        return frames if frame_index is None else frames[:, frame_index.to(frames.device)]

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, num_frames=z.shape[0]).sample

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = (frames.flatten(0, 1) * 2 - 1).to(self.vae.device, self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = (posterior.mode() if generator is None else posterior.sample(generator)).float()
        return (z * self.vae.config.scaling_factor).reshape(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    # --- training on data (EDM, as v-prediction on ᾱ = 1 / (1 + σ²); module docstring) ------
    def training_timestep(self, generator: torch.Generator) -> float:
        """c_noise = ln(σ)/4 with ln σ ~ N(train_noise_mean, train_noise_std²)."""
        return 0.25 * (self.train_noise_mean + self.train_noise_std * float(torch.randn((), generator=generator)))

    @staticmethod
    def _sigma(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).to(like.device, torch.float32)
        return torch.exp(4 * t).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's input at c_noise `t`: (x0 + σε) / sqrt(σ² + 1)."""
        sigma = self._sigma(t, latents)
        return ((latents.float() + sigma * noise.float()) / (sigma ** 2 + 1).sqrt()).to(latents.dtype)

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v for which EulerDiscreteScheduler's denoised x0 (c_skip·x + c_out·v) is `latents`:
        (ε − σ·x0) / sqrt(σ² + 1)."""
        sigma = self._sigma(t, latents)
        return ((noise.float() - sigma * latents.float()) / (sigma ** 2 + 1).sqrt()).to(latents.dtype)

    def make_scheduler(self) -> EulerDiscreteScheduler:
        return EulerDiscreteScheduler.from_config(self.scheduler_config)

    def trainable_module(self) -> nn.Module:
        return self.unet


def svd(pretrained: str = "stabilityai/stable-video-diffusion-img2vid-xt", revision: str | None = None,
        unet_dtype: str = "bf16", vae_dtype: str = "fp32", image_encoder_dtype: str = "bf16", fps: int = 7,
        motion_bucket_id: int = 127, noise_aug_strength: float = 0.02, min_guidance_scale: float = 1.0,
        decode_chunk: int | None = None, train_noise_mean: float = 0.7, train_noise_std: float = 1.6,
        lora_rank: int = 16, lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
        lora_dropout: float = 0.0, gradient_checkpointing: bool = True, checkpoint_blocks: bool = True) -> SVDBackbone:
    """SVD from a hub id or a local folder in the diffusers layout (unet/, vae/, image_encoder/,
    feature_extractor/, scheduler/)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from backbones.loading import check_sources, load_part, load_scheduler_config, parse_dtype, part_source

    sources = {name: part_source("backbone.pretrained", None, pretrained, name, revision=revision)
               for name in ("unet", "vae", "image_encoder")}
    sources["feature_extractor"] = part_source("backbone.pretrained", None, pretrained, "feature_extractor",
                                               "preprocessor_config.json", revision, weights=False)
    sources["scheduler"] = part_source("backbone.pretrained", None, pretrained, "scheduler",
                                       "scheduler_config.json", revision, weights=False)
    check_sources(list(sources.values()))
    return SVDBackbone(
        name="svd",
        unet=load_part(UNetSpatioTemporalConditionModel, sources["unet"], parse_dtype(unet_dtype, "backbone.unet_dtype")),
        vae=load_part(AutoencoderKLTemporalDecoder, sources["vae"], parse_dtype(vae_dtype, "backbone.vae_dtype")),
        image_encoder=load_part(CLIPVisionModelWithProjection, sources["image_encoder"],
                                parse_dtype(image_encoder_dtype, "backbone.image_encoder_dtype")),
        feature_extractor=load_part(CLIPImageProcessor, sources["feature_extractor"]),
        scheduler_config=load_scheduler_config(sources["scheduler"]), fps=fps, motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength, min_guidance_scale=min_guidance_scale, decode_chunk=decode_chunk,
        train_noise_mean=train_noise_mean, train_noise_std=train_noise_std, lora_rank=lora_rank,
        lora_alpha=lora_alpha, lora_target_modules=lora_target_modules, lora_dropout=lora_dropout, gradient_checkpointing=gradient_checkpointing,
        checkpoint_blocks=checkpoint_blocks)
