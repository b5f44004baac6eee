"""Real-size models built from their published configs on the meta device: no download, no
memory. Counts parameters per part so the docs and tests can compare them with published sizes.

    python -m backbones.sizes          # prints the table
"""
from __future__ import annotations

import json
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel,
                       UNetMotionModel)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

CONFIGS = Path(__file__).parent / "configs"  # sources of every file: configs/SOURCES.md


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _text_encoder(name: str) -> CLIPTextModel:
    config = {k: v for k, v in load_config(name).items() if not k.startswith("_")}
    return CLIPTextModel(CLIPTextConfig(**config))


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
    raise ValueError(f"no real-size configs for backbone {backbone!r}; "
                     "choose modelscope, animatediff or animatediff_lightning")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_count(unet: nn.Module, rank: int = 16) -> int:
    """Trainable LoRA parameters the default attention targets add to `unet` at `rank`."""
    from peft import LoraConfig, inject_adapter_in_model

    from backbones.video_unet import DEFAULT_LORA_TARGETS
    with init_empty_weights():
        inject_adapter_in_model(LoraConfig(r=rank, target_modules=list(DEFAULT_LORA_TARGETS)), unet)
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def main() -> None:
    for backbone in ("modelscope", "animatediff"):
        parts = real_size_parts(backbone)
        total = sum(count(parts[k]) for k in ("unet", "vae", "text_encoder"))
        for name, module in parts.items():
            print(f"{backbone:12s} {name:15s} {count(module):>15,d}")
        print(f"{backbone:12s} {'total':15s} {total:>15,d}")
        print(f"{backbone:12s} {'LoRA rank 16':15s} {lora_count(parts['unet']):>15,d}")


if __name__ == "__main__":
    main()
