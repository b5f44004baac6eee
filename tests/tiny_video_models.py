"""Tiny random-weight X-CLIP, VideoMAE and YOLOS checkpoints in the real hub folder layouts
(config.json + weights + preprocessor_config.json, plus the tokenizer for X-CLIP), so the video
rewards load them exactly as they load `microsoft/xclip-base-patch32`,
`MCG-NJU/videomae-base-finetuned-kinetics` and `hustvl/yolos-tiny`, with no download.

The processor settings are the real checkpoints' values except the sizes (32 instead of 224 /
512), so parity tests exercise the same resample filter, crop and mean/std.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (VideoMAEConfig, VideoMAEForVideoClassification, XCLIPConfig,
                          XCLIPModel, YolosConfig, YolosForObjectDetection)

from backbones.tiny import byte_level_tokenizer

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZE = 32  # the tiny models' input size (shortest edge and crop)

# Real Kinetics-400 names; "drinking" is a substring of "drinking beer" (longest-match tests).
KINETICS_LABELS = {0: "playing guitar", 1: "dancing ballet", 2: "drinking", 3: "drinking beer",
                   4: "walking the dog", 5: "surfing water"}
# COCO-like, with an "N/A" gap as in the real YOLOS id2label; "dog" is inside "hot dog".
COCO_LABELS = {0: "N/A", 1: "person", 2: "bicycle", 3: "car", 4: "dog", 5: "cat", 6: "hot dog"}

# The legacy-format preprocessor_config.json that microsoft/xclip-base-patch32 and
# MCG-NJU/videomae-base-finetuned-kinetics ship (int size, VideoMAEFeatureExtractor), size shrunk;
# crop_size is absent there (the class default, 224, applies), so the tiny folder must state it.
VIDEOMAE_PREPROCESSOR = {"do_center_crop": True, "do_normalize": True, "do_resize": True,
                         "crop_size": SIZE,
                         "feature_extractor_type": "VideoMAEFeatureExtractor",
                         "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
                         "resample": 2, "size": SIZE}
# hustvl/yolos-tiny's preprocessor_config.json (shortest_edge 512 there).
YOLOS_PREPROCESSOR = {"do_normalize": True, "do_resize": True,
                      "image_processor_type": "YolosImageProcessor", "format": "coco_detection",
                      "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
                      "size": {"shortest_edge": SIZE, "longest_edge": 1333}}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def tiny_xclip(seed: int = 0, num_frames: int = 4, vocab_size: int = 600,
               max_length: int = 32) -> XCLIPModel:
    torch.manual_seed(seed)
    config = XCLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=max_length),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=SIZE, patch_size=8,
                           num_frames=num_frames, mit_hidden_size=32, mit_intermediate_size=37,
                           mit_num_hidden_layers=1, mit_num_attention_heads=4),
        projection_dim=32, prompt_layers=1, prompt_num_attention_heads=4)
    return XCLIPModel(config).eval()


def write_xclip(folder: Path, seed: int = 0) -> Path:
    """model + tokenizer + the hub's legacy preprocessor_config.json, as in xclip-base-patch32."""
    tokenizer = byte_level_tokenizer(32)
    tiny_xclip(seed, vocab_size=len(tokenizer), max_length=32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json",
                {**VIDEOMAE_PREPROCESSOR, "processor_class": "XCLIPProcessor"})
    return folder


def tiny_videomae(seed: int = 1, num_frames: int = 4) -> VideoMAEForVideoClassification:
    torch.manual_seed(seed)
    config = VideoMAEConfig(image_size=SIZE, patch_size=16, num_frames=num_frames, tubelet_size=2,
                            hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, use_mean_pooling=True, initializer_range=0.2,
                            id2label=KINETICS_LABELS,
                            label2id={v: k for k, v in KINETICS_LABELS.items()})
    return VideoMAEForVideoClassification(config).eval()


def write_videomae(folder: Path, seed: int = 1) -> Path:
    tiny_videomae(seed).save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", VIDEOMAE_PREPROCESSOR)
    return folder


def tiny_yolos(seed: int = 2) -> YolosForObjectDetection:
    torch.manual_seed(seed)
    config = YolosConfig(image_size=[SIZE, SIZE], patch_size=8, hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                         num_detection_tokens=5, initializer_range=0.2, id2label=COCO_LABELS,
                         label2id={v: k for k, v in COCO_LABELS.items()})
    return YolosForObjectDetection(config).eval()


def write_yolos(folder: Path, seed: int = 2) -> Path:
    tiny_yolos(seed).save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", YOLOS_PREPROCESSOR)
    return folder
