"""LoRA saving and loading, shared by every backbone whose denoiser carries peft LoRA layers: the
keys are the denoiser's attribute name as prefix (`unet.` for the UNet backbones, `transformer.`
for Wan), which is the prefix diffusers' pipelines read in `load_lora_weights`."""
from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

# Diffusers' attention projections; LoRA there is what VADER and the diffusers trainers adapt.
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(name: str, model: nn.Module, rank: int, alpha: float | None,
             target_modules: list[str] | None, dropout: float) -> LoraConfig:
    """Put peft LoRA layers into the frozen `model` (injected directly: not every diffusers model
    has `add_adapter`) and return their config. peft marks only the new parameters trainable; they
    stay float32 whatever the frozen weights' dtype, so small updates are not rounded away. Dropout
    on the LoRA input acts only while the trainer's step runs (the model stays in eval mode;
    vader.evaluation.evaluate.set_lora_dropout switches it)."""
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                        target_modules=list(target_modules or DEFAULT_LORA_TARGETS), lora_dropout=dropout)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"backbone {name!r}: lora_target_modules={list(config.target_modules)} matched "
                         f"no layer ({err}); the default {list(DEFAULT_LORA_TARGETS)} targets attention") from err
    model.eval()  # peft's new LoRA dropout modules start in train mode
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return config


class PeftLora:
    """Mixed into a backbone with `name`, `lora_config`, `vae`, `text_encoder` and its denoiser at
    the attribute `lora_prefix`."""

    lora_prefix: str

    def lora_metadata(self) -> dict[str, Any]:
        # The LoraConfig as diffusers' `save_lora_weights` records it in the safetensors header,
        # so `pipe.load_lora_weights` rebuilds the same rank, alpha and targets.
        config = self.lora_config.to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        return {f"{self.lora_prefix}.{k}": v for k, v in config.items()
                if k in ("r", "lora_alpha", "target_modules")}

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(getattr(self, self.lora_prefix))
        return {f"{self.lora_prefix}.{k}": v.detach().clone() for k, v in state.items()}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.lora_state_dict()
        missing, unexpected = set(current) - set(state), set(state) - set(current)
        if missing or unexpected:
            raise ValueError(
                f"LoRA weights do not fit backbone {self.name!r} (lora_rank/targets differ?): "
                f"{len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})")
        for k, v in state.items():
            if v.shape != current[k].shape:
                raise ValueError(f"LoRA weight {k} has shape {tuple(v.shape)}; this backbone "
                                 f"expects {tuple(current[k].shape)} (is lora_rank the same as "
                                 "when it was saved?)")
        cut = len(self.lora_prefix) + 1
        set_peft_model_state_dict(getattr(self, self.lora_prefix), {k[cut:]: v for k, v in state.items()})

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for prefix in (self.lora_prefix, "vae", "text_encoder"):
            for k, v in getattr(self, prefix).state_dict().items():
                if "lora_" not in k:
                    out[f"{prefix}.{k}"] = v.detach().clone()
        return out
