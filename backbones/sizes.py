"""Real-size models built from their published configs on the meta device: no download, no
memory. Counts parameters per part so the docs and tests can compare them with published sizes:
ModelScope, AnimateDiff, Stable Video Diffusion XT (UNets) and Wan2.1-T2V-1.3B, CogVideoX-2B / -5B
(diffusion transformers).
`real_size_backbone` builds the same backbones with random weights on a real device, for timing
(benchmarks/real_size_step.py).

    python -m backbones.sizes          # prints the table
"""
from __future__ import annotations

import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLTemporalDecoder,
                       AutoencoderKLWan, CogVideoXTransformer3DModel, MotionAdapter,
                       UNet2DConditionModel, UNet3DConditionModel, UNetMotionModel,
                       UNetSpatioTemporalConditionModel, WanTransformer3DModel)
from torch import nn
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                          CLIPVisionModelWithProjection, T5Config, T5EncoderModel, UMT5Config,
                          UMT5EncoderModel)

CONFIGS = Path(__file__).parent / "configs"  # sources of every file: configs/SOURCES.md


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# transformers classes keep no _class_name in their config.json; ours name the model class.
TEXT_ENCODERS = {"CLIPTextModel": (CLIPTextConfig, CLIPTextModel),
                 # SVD's conditioning encoder is an image encoder (CLIP ViT-H/14), built the same way
                 "CLIPVisionModelWithProjection": (CLIPVisionConfig, CLIPVisionModelWithProjection),
                 "UMT5EncoderModel": (UMT5Config, UMT5EncoderModel),
                 "T5EncoderModel": (T5Config, T5EncoderModel)}

# The diffusion transformers: (transformer class, transformer config, VAE class, VAE config,
# text-encoder config). CogVideoX-2B and -5B share the VAE architecture and the T5-XXL encoder; the
# 5B's VAE config differs only in its latent scaling factor.
DIT_CONFIGS = {
    "wan": (WanTransformer3DModel, "wan2.1_t2v_1.3b_transformer", AutoencoderKLWan, "wan2.1_vae",
            "wan2.1_text_encoder"),
    "cogvideox_2b": (CogVideoXTransformer3DModel, "cogvideox_2b_transformer", AutoencoderKLCogVideoX,
                     "cogvideox_2b_vae", "cogvideox_text_encoder"),
    "cogvideox_5b": (CogVideoXTransformer3DModel, "cogvideox_5b_transformer", AutoencoderKLCogVideoX,
                     "cogvideox_5b_vae", "cogvideox_text_encoder"),
}
BACKBONES = ("modelscope", "animatediff", "animatediff_lightning", "svd", *DIT_CONFIGS)


def _text_encoder(name: str) -> nn.Module:
    config = load_config(name)
    config_class, model_class = TEXT_ENCODERS[config["_class_name"]]
    return model_class(config_class(**{k: v for k, v in config.items() if not k.startswith("_")}))


def real_size_parts(backbone: str) -> dict[str, nn.Module]:
    """The denoiser, VAE and text encoder (SVD: image encoder) of `backbone` at published size,
    on the meta device. `svd` is stable-video-diffusion-img2vid-xt; the 14-frame img2vid has the
    same architecture (its configs differ only in the UNet's `num_frames`, which sizes nothing)."""
    # include_buffers: UNetMotionModel.from_unet2d copies the motion modules' positional-encoding
    # buffers, which must be meta tensors too.
    with init_empty_weights(include_buffers=True):
        if backbone == "modelscope":
            return {"unet": UNet3DConditionModel.from_config(load_config("modelscope_unet")),
                    "vae": AutoencoderKL.from_config(load_config("modelscope_vae")),
                    "text_encoder": _text_encoder("modelscope_text_encoder")}
        if backbone in ("animatediff", "animatediff_lightning"):
            image_unet = UNet2DConditionModel.from_config(load_config("sd15_unet"))
            adapter = MotionAdapter.from_config(load_config("motion_adapter_v1-5-2"))
            return {"image_unet": image_unet, "motion_adapter": adapter,
                    "unet": UNetMotionModel.from_unet2d(image_unet, adapter),
                    "vae": AutoencoderKL.from_config(load_config("sd15_vae")),
                    "text_encoder": _text_encoder("sd15_text_encoder")}
        if backbone == "svd":
            # .to("meta"): the AlphaBlenders' one-value mix factors escape init_empty_weights
            unet = UNetSpatioTemporalConditionModel.from_config(load_config("svd_xt_unet"))
            vae = AutoencoderKLTemporalDecoder.from_config(load_config("svd_xt_vae"))
            return {"unet": unet.to("meta"), "vae": vae.to("meta"),
                    "image_encoder": _text_encoder("svd_xt_image_encoder")}
        if backbone in DIT_CONFIGS:
            transformer, transformer_config, vae, vae_config, text_encoder = DIT_CONFIGS[backbone]
            return {"transformer": transformer.from_config(load_config(transformer_config)),
                    "vae": vae.from_config(load_config(vae_config)),
                    "text_encoder": _text_encoder(text_encoder)}
    raise ValueError(f"no real-size configs for backbone {backbone!r}; choose one of {BACKBONES}")


def real_size_backbone(backbone: str, device: str, dtype: str = "bf16", lora_rank: int = 16,
                       decode_chunk: int = 1, checkpoint_blocks: bool = False,
                       vae_dtype: str | None = None):
    """A real-size backbone with random weights, built directly on `device` (for benchmarks on a
    GPU: the published architecture without downloading it). The UNets' tokenizer is the
    byte-level one of `tiny`; token ids stay inside the real vocabulary, and speed does not depend
    on them. Wan and CogVideoX: see `real_size_dit` (their T5 encoders are stand-ins); SVD: see
    `real_size_svd`."""
    import torch

    from backbones.loading import parse_dtype
    from backbones.tiny import byte_level_tokenizer
    from backbones.video_unet import VideoUNetBackbone
    if backbone in DIT_CONFIGS:
        return real_size_dit(backbone, device, dtype, lora_rank, checkpoint_blocks, vae_dtype)
    if backbone == "svd":
        return real_size_svd(device, dtype, lora_rank, vae_dtype, checkpoint_blocks)
    weights = parse_dtype(dtype, "dtype")
    with torch.device(device):
        if backbone in ("modelscope", "videocrafter2"):  # VideoCrafter2: ModelScope's + fps embedding
            from backbones.videocrafter2 import FpsUNet3DConditionModel
            unet_cls = FpsUNet3DConditionModel if backbone == "videocrafter2" else UNet3DConditionModel
            unet = unet_cls.from_config(load_config("modelscope_unet"))
            vae = AutoencoderKL.from_config(load_config("modelscope_vae"))
            text_encoder = _text_encoder("modelscope_text_encoder")
            scheduler = "dpmsolver" if backbone == "modelscope" else "ddim"
            config, overrides = load_config("modelscope_scheduler"), {}
        else:
            from backbones.animatediff import ANIMATEDIFF_SCHEDULER, motion_unet
            unet = motion_unet(UNet2DConditionModel.from_config(load_config("sd15_unet")),
                               MotionAdapter.from_config(load_config("motion_adapter_v1-5-2")),
                               torch.float32)
            vae = AutoencoderKL.from_config(load_config("sd15_vae"))
            text_encoder = _text_encoder("sd15_text_encoder")
            config = load_config("sd15_scheduler")
            scheduler, overrides = ("euler", {"timestep_spacing": "trailing", "beta_schedule": "linear"}) \
                if backbone == "animatediff_lightning" else ("ddim", ANIMATEDIFF_SCHEDULER)
    weights_vae = parse_dtype(vae_dtype, "vae_dtype") if vae_dtype else weights
    backbone_class = VideoUNetBackbone
    if backbone == "videocrafter2":
        from backbones.videocrafter2 import VideoCrafter2Backbone as backbone_class  # its scaled DDIM
    return backbone_class(
        name=backbone, unet=unet.to(weights), vae=vae.to(weights_vae),
        text_encoder=text_encoder.to(weights), tokenizer=byte_level_tokenizer(77),
        scheduler_config={k: v for k, v in config.items() if not k.startswith("_")},
        scheduler=scheduler, scheduler_overrides=overrides, lora_rank=lora_rank,
        decode_chunk=decode_chunk, text_per_frame=backbone not in ("modelscope", "videocrafter2"),
        checkpoint_blocks=checkpoint_blocks)


def real_size_svd(device: str, dtype: str = "bf16", lora_rank: int = 16, vae_dtype: str | None = None,
                  checkpoint_blocks: bool = True):
    """Stable Video Diffusion XT as an SVDBackbone at published size with random weights, built
    directly on `device`: UNet and image encoder in `dtype`, the temporal VAE in `vae_dtype`
    (default float32, as conf/backbone/svd.yaml: the VAE config asks for `force_upcast`). Like the
    conf it decodes each video in one chunk (`decode_chunk` null); `checkpoint_blocks`: each layer
    of the UNet's blocks, or whole sampler steps. A fresh CLIPImageProcessor stands in for
    the checkpoint's feature extractor: it holds no weights."""
    import torch
    from transformers import CLIPImageProcessor

    from backbones.loading import parse_dtype
    from backbones.svd import SVDBackbone
    weights = parse_dtype(dtype, "dtype")
    with torch.device(device):
        unet = UNetSpatioTemporalConditionModel.from_config(load_config("svd_xt_unet"))
        vae = AutoencoderKLTemporalDecoder.from_config(load_config("svd_xt_vae"))
        image_encoder = _text_encoder("svd_xt_image_encoder")
    scheduler = {k: v for k, v in load_config("svd_xt_scheduler").items() if not k.startswith("_")}
    # .to(device) too: the AlphaBlenders' mix factors are made with torch.Tensor([...]), which
    # ignores the default device and lands on the CPU
    return SVDBackbone(name="svd", unet=unet.to(device, weights),
                       vae=vae.to(device, parse_dtype(vae_dtype or "fp32", "vae_dtype")),
                       image_encoder=image_encoder.to(device, weights),
                       feature_extractor=CLIPImageProcessor(),
                       scheduler_config=scheduler, lora_rank=lora_rank, checkpoint_blocks=checkpoint_blocks)


# Scheduler configs for the diffusion transformers' real-size builds (the backbones take these
# keys; timing does not depend on the values). Wan2.1's diffusers checkpoints ship
# UniPCMultistepScheduler with flow_shift 3.0 over 1000 training steps (scheduler_config.json, e.g.
# the Wan-AI/Wan2.1-VACE-14B-diffusers mirror in huggingface.co/JackIsNotInTheBox/
# Video_Watermark_Remover_Checkpoints, commit 166a3d3); WanBackbone gives either of its schedulers
# that shift, and runs flow_euler by default.
WAN_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
# CogVideoXDDIMScheduler of https://huggingface.co/THUDM/CogVideoX-2b/blob/refs%2Fpr%2F2/scheduler/
# scheduler_config.json (482 B, the size main lists). The 5B ships CogVideoXDPMScheduler, whose
# config was not checked; CogVideoXBackbone samples both with DDIM on these levels anyway.
COGVIDEOX_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "clip_sample_range": 1.0,
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "sample_max_value": 1.0,
    "set_alpha_to_one": True, "snr_shift_scale": 3.0, "steps_offset": 0,
    "timestep_spacing": "trailing", "trained_betas": None}


class TextEncoderStandIn(nn.Module):
    """In place of umT5-XXL (Wan, 5.7 B) or T5-XXL (CogVideoX, 4.8 B) in real-size timing runs:
    one embedding table giving each token a vector of the encoder's width (4096), returned the way
    the encoders return theirs (`last_hidden_state`, or item 0). A training step never runs the
    T5 (the backbones cache each prompt's embeddings and offload the encoder), so the transformer
    sees embeddings of the real shape and a step's time and memory exclude the encoder, as they
    would with the real one."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)

    def forward(self, input_ids, attention_mask=None):
        from transformers.modeling_outputs import BaseModelOutput
        return BaseModelOutput(last_hidden_state=self.embed(input_ids))


def _build_on(model_class, config: str, device: str, dtype):
    """`model_class` from configs/`config`.json with random weights, created on `device` directly
    in `dtype` (no float32 copy first: the 5B's would be 22 GB), then the modules diffusers'
    from_pretrained keeps in float32 (`_keep_in_fp32_modules`: Wan's norms, time embedder, rope)
    upcast, so the dtypes are those of a checkpoint loaded in `dtype`."""
    import torch
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class.from_config(load_config(config))
    finally:
        torch.set_default_dtype(default)
    keep = model._keep_in_fp32_modules or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.dtype in (torch.float16, torch.bfloat16) and any(m in name.split(".") for m in keep):
            tensor.data = tensor.data.float()
    return model


def real_size_dit(backbone: str, device: str, dtype: str = "bf16", lora_rank: int = 16,
                  checkpoint_blocks: bool = True, vae_dtype: str | None = None):
    """Wan2.1-T2V-1.3B (`wan`) or CogVideoX-2B / -5B as a WanBackbone / CogVideoXBackbone at
    published size with random weights, built directly on `device`: the transformer in `dtype`,
    the VAE in `vae_dtype` (default: conf/backbone's, float32 for Wan, `dtype` for CogVideoX).
    The text encoder is a `TextEncoderStandIn`, not the T5 (embeddings of 512 tokens for Wan, 226
    for CogVideoX, width 4096): numbers measured on this build exclude the text encoder, which runs
    once per new prompt and holds no accelerator memory during a step. Tokens come from the
    byte-level tokenizer of `tiny`."""
    from backbones.loading import parse_dtype
    from backbones.tiny import byte_level_tokenizer
    weights = parse_dtype(dtype, "dtype")
    transformer_class, transformer_config, vae_class, vae_config, text_config = DIT_CONFIGS[backbone]
    wan = backbone == "wan"
    transformer = _build_on(transformer_class, transformer_config, device, weights)
    vae = _build_on(vae_class, vae_config, device,
                    parse_dtype(vae_dtype or ("fp32" if wan else dtype), "vae_dtype"))
    # WanPipeline's max_sequence_length; CogVideoX pads to its transformer's text length
    text_length = 512 if wan else transformer.config.max_text_seq_length
    tokenizer = byte_level_tokenizer(text_length)
    text_encoder = TextEncoderStandIn(len(tokenizer), load_config(text_config)["d_model"]).to(device, weights)
    parts = dict(name=backbone, transformer=transformer, vae=vae, text_encoder=text_encoder,
                 tokenizer=tokenizer, lora_rank=lora_rank, checkpoint_blocks=checkpoint_blocks)
    if wan:
        from backbones.wan import WanBackbone
        return WanBackbone(**parts, scheduler_config=WAN_SCHEDULER, max_sequence_length=text_length)
    from backbones.cogvideox import CogVideoXBackbone
    return CogVideoXBackbone(**parts, scheduler_config=COGVIDEOX_SCHEDULER)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def add_lora(model: nn.Module, rank: int = 16) -> nn.Module:
    """`model` with LoRA of `rank` on the default attention targets, on the meta device. The
    UNets and the diffusion transformers name their projections alike (to_q/to_k/to_v/to_out.0)."""
    from peft import LoraConfig, inject_adapter_in_model

    from backbones.lora import DEFAULT_LORA_TARGETS
    with init_empty_weights():
        return inject_adapter_in_model(LoraConfig(r=rank, target_modules=list(DEFAULT_LORA_TARGETS)), model)


def lora_count(unet: nn.Module, rank: int = 16) -> int:
    """Trainable LoRA parameters the default attention targets add to `unet` at `rank`."""
    add_lora(unet, rank)
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def denoiser(parts: dict[str, nn.Module]) -> nn.Module:
    return parts["transformer"] if "transformer" in parts else parts["unet"]


def main() -> None:
    for backbone in ("modelscope", "animatediff", "svd", *DIT_CONFIGS):
        parts = real_size_parts(backbone)
        # image_unet and motion_adapter are inside AnimateDiff's unet: counted once
        total = sum(count(m) for name, m in parts.items() if name not in ("image_unet", "motion_adapter"))
        for name, module in parts.items():
            print(f"{backbone:12s} {name:15s} {count(module):>15,d}")
        print(f"{backbone:12s} {'total':15s} {total:>15,d}")
        print(f"{backbone:12s} {'LoRA rank 16':15s} {lora_count(denoiser(parts)):>15,d}")


if __name__ == "__main__":
    main()
