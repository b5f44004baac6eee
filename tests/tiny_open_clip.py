"""A tiny random-weight open_clip CLIP and HPS checkpoints of it in the published layout, for the
HPS reward's tests: the real ViT-H-14 has the same structure (and the same OpenAI preprocessing,
224 px), only wider and deeper."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rewards.hps import FILES

# ViT-H-14's config (open_clip/model_configs/ViT-H-14.json) shrunk: widths 32, 2 layers, patch 32.
# image_size and the text vocabulary/context are ViT-H-14's, so preprocessing and tokenizer are
# exactly the real ones.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16,
                            "patch_size": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 2}}
OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073],
                     "std": [0.26862954, 0.26130258, 0.27577711],
                     "interpolation": "bicubic", "resize_mode": "shortest"}


def write_arch(folder: Path) -> str:
    """An open_clip `local-dir:` folder holding only open_clip_config.json; returns the
    `model_name` that builds it (reward_fn.model_name)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": OPENAI_PREPROCESS}, indent=2))
    return f"local-dir:{folder}"


def tiny_clip(model_name: str, seed: int = 0):
    """The tiny CLIP with seeded random weights, and open_clip's own eval transform for it."""
    import open_clip
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=None, load_weights=False, pretrained_text=False)
    return model.eval(), preprocess


def write_hps(folder: Path, model, module_prefix: bool = True,
              versions: tuple[str, ...] = tuple(FILES)) -> Path:
    """`model`'s weights as HPS checkpoint files in `folder`, laid out as the published ones:
    {'state_dict': {'module.' + name: tensor}} (the training run was DDP-wrapped)."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "module." if module_prefix else ""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    for version in versions:
        torch.save({"state_dict": state}, folder / FILES[version])
    return folder
