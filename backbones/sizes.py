"""Real-size models built from their published configs on the meta device: no download, no
memory. Counts parameters per part so the docs and tests can compare them with published sizes:
ModelScope, AnimateDiff (UNets) and Wan2.1-T2V-1.3B, CogVideoX-2B / -5B (diffusion transformers).

    python -m backbones.sizes          # prints the table
"""
from __future__ import annotations

import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLWan,
                       CogVideoXTransformer3DModel, MotionAdapter, UNet2DConditionModel,
                       UNet3DConditionModel, UNetMotionModel, WanTransformer3DModel)
from torch import nn
from transformers import (CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, UMT5Config,
                          UMT5EncoderModel)

CONFIGS = Path(__file__).parent / "configs"  # sources of every file: configs/SOURCES.md


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


# transformers classes keep no _class_name in their config.json; ours name the model class.
TEXT_ENCODERS = {"CLIPTextModel": (CLIPTextConfig, CLIPTextModel),
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
BACKBONES = ("modelscope", "animatediff", "animatediff_lightning", *DIT_CONFIGS)


def _text_encoder(name: str) -> nn.Module:
    config = load_config(name)
    config_class, model_class = TEXT_ENCODERS[config["_class_name"]]
    return model_class(config_class(**{k: v for k, v in config.items() if not k.startswith("_")}))


def real_size_parts(backbone: str) -> dict[str, nn.Module]:
    """The denoiser, VAE and text encoder of `backbone` at published size, on the meta device."""
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
        if backbone in DIT_CONFIGS:
            transformer, transformer_config, vae, vae_config, text_encoder = DIT_CONFIGS[backbone]
            return {"transformer": transformer.from_config(load_config(transformer_config)),
                    "vae": vae.from_config(load_config(vae_config)),
                    "text_encoder": _text_encoder(text_encoder)}
    raise ValueError(f"no real-size configs for backbone {backbone!r}; choose one of {BACKBONES}")


def real_size_backbone(backbone: str, device: str, dtype: str = "bf16", lora_rank: int = 16,
                       decode_chunk: int = 1, checkpoint_blocks: bool = False):
    """A real-size backbone with random weights, built directly on `device` (for benchmarks on a
    GPU: the published architecture without downloading it). The tokenizer is the byte-level one
    of `tiny`; token ids stay inside the real vocabulary, and speed does not depend on them."""
    import torch

    from backbones.loading import parse_dtype
    from backbones.tiny import byte_level_tokenizer
    from backbones.video_unet import VideoUNetBackbone
    weights = parse_dtype(dtype, "dtype")
    with torch.device(device):
        if backbone == "modelscope":
            unet = UNet3DConditionModel.from_config(load_config("modelscope_unet"))
            vae = AutoencoderKL.from_config(load_config("modelscope_vae"))
            text_encoder = _text_encoder("modelscope_text_encoder")
            scheduler, config, overrides = "dpmsolver", load_config("modelscope_scheduler"), {}
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
    return VideoUNetBackbone(
        name=backbone, unet=unet.to(weights), vae=vae.to(weights),
        text_encoder=text_encoder.to(weights), tokenizer=byte_level_tokenizer(77),
        scheduler_config={k: v for k, v in config.items() if not k.startswith("_")},
        scheduler=scheduler, scheduler_overrides=overrides, lora_rank=lora_rank,
        decode_chunk=decode_chunk, text_per_frame=backbone != "modelscope",
        checkpoint_blocks=checkpoint_blocks)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def add_lora(model: nn.Module, rank: int = 16) -> nn.Module:
    """`model` with LoRA of `rank` on the default attention targets, on the meta device. The
    UNets and the diffusion transformers name their projections alike (to_q/to_k/to_v/to_out.0)."""
    from peft import LoraConfig, inject_adapter_in_model

    from backbones.video_unet import DEFAULT_LORA_TARGETS
    with init_empty_weights():
        return inject_adapter_in_model(LoraConfig(r=rank, target_modules=list(DEFAULT_LORA_TARGETS)), model)


def lora_count(unet: nn.Module, rank: int = 16) -> int:
    """Trainable LoRA parameters the default attention targets add to `unet` at `rank`."""
    add_lora(unet, rank)
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def denoiser(parts: dict[str, nn.Module]) -> nn.Module:
    return parts["transformer"] if "transformer" in parts else parts["unet"]


def main() -> None:
    for backbone in ("modelscope", "animatediff", *DIT_CONFIGS):
        parts = real_size_parts(backbone)
        # image_unet and motion_adapter are inside AnimateDiff's unet: counted once
        total = sum(count(m) for name, m in parts.items() if name not in ("image_unet", "motion_adapter"))
        for name, module in parts.items():
            print(f"{backbone:12s} {name:15s} {count(module):>15,d}")
        print(f"{backbone:12s} {'total':15s} {total:>15,d}")
        print(f"{backbone:12s} {'LoRA rank 16':15s} {lora_count(denoiser(parts)):>15,d}")


if __name__ == "__main__":
    main()
