"""Tiny random-weight CLIP checkpoints in the real hub layouts the CLIP rewards load: a CLIPModel
folder (config.json, model.safetensors, tokenizer files, preprocessor_config.json in the legacy
form the OpenAI and LAION repositories use), a processor-only folder (PickScore takes its
processor from another repository), and an improved-aesthetic-predictor head file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from backbones.tiny import byte_level_tokenizer
from rewards.aesthetic import AestheticMLP

MAX_TOKENS = 24
PROJECTION_DIM = 16  # differs from the towers' width (32), so code using the wrong one fails
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def preprocessor_config(size: int, crop: int) -> dict:
    """openai/clip-vit-large-patch14's preprocessor_config.json with `size` and `crop` swapped in."""
    return {"crop_size": crop, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN,
            "image_std": OPENAI_STD, "resample": 3, "size": size}


def tiny_clip(seed: int = 0, image_size: int = 32) -> CLIPModel:
    tokenizer = byte_level_tokenizer(MAX_TOKENS)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_hidden_layers=2, image_size=image_size, patch_size=8),
        projection_dim=PROJECTION_DIM))


def write_processor(folder: Path, size: int = 32, crop: int = 32) -> Path:
    """Tokenizer files + preprocessor_config.json, as in laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_level_tokenizer(MAX_TOKENS).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(size, crop), indent=2))
    return folder


def write_clip(folder: Path, seed: int = 0, with_processor: bool = True) -> Path:
    """A CLIPModel folder; with the tokenizer and preprocessor config unless `with_processor`
    is false (then only a separate processor folder makes it usable)."""
    tiny_clip(seed).save_pretrained(folder)
    if with_processor:
        write_processor(folder)
    return folder


def write_aesthetic_head(path: Path, width: int = PROJECTION_DIM, seed: int = 0) -> Path:
    """A head file in sac+logos+ava1-l14-linearMSE.pth's key layout (layers.{0,2,4,6,7}.*),
    taking `width`-wide embeddings instead of 768."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(AestheticMLP(width).state_dict(), path)
    return path


def reward_folders(root: Path) -> dict[str, Path]:
    """Every CLIP reward's tiny folders: `clip` (model, tokenizer, preprocessor and the aesthetic
    head `head.pth`), and PickScore's layout: the model alone (`bare`) with its tokenizer and
    image settings elsewhere (`processor`)."""
    clip = write_clip(root / "clip")
    write_aesthetic_head(clip / "head.pth")
    return {"clip": clip, "head": clip / "head.pth",
            "bare": write_clip(root / "bare", seed=1, with_processor=False),
            "processor": write_processor(root / "processor")}
