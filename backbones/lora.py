"""LoRA saving and loading, shared by every backbone whose denoiser carries peft LoRA layers: the
keys are the denoiser's attribute name as prefix (`unet.` for the UNet backbones, `transformer.`
for Wan), which is the prefix diffusers' pipelines read in `load_lora_weights`."""
from __future__ import annotations

from typing import Any

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict


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
