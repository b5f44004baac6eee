"""Object presence reward: how confidently a YOLOS detector finds the target object, per frame.

Y. Fang et al., "You Only Look at One Sequence: Rethinking Transformer in Vision through Object
Detection", NeurIPS 2021; checkpoints `hustvl/yolos-tiny` (shorter side 512) and
`hustvl/yolos-base` (800), COCO classes in config.id2label.
"""
from __future__ import annotations

from typing import Any

import torch

from backbones.loading import Source, check_source
from rewards import check_frames
from rewards.common import aggregate, check_aggregation, flatten_frames, resize_crop_normalize
from rewards.video_models import (RESAMPLE, check_frames_option, check_prompt_labels,
                                  find_label, label_in_text, load_cached, read_json, resize_to)

MODES = ("maximize", "minimize")


def yolos_size(height: int, width: int, short: int, long: int | None) -> tuple[int, int]:
    """Output size of YolosImageProcessor's resize: shorter side to `short` unless the longer
    would pass `long`, aspect ratio kept, both sides floored to multiples of 16. Same arithmetic
    as transformers.models.yolos.image_processing_pil_yolos.get_size_with_aspect_ratio_yolos."""
    raw = None
    if long is not None and max(height, width) / min(height, width) * short > long:
        raw = long * min(height, width) / max(height, width)
        short = int(round(raw))
    if width < height:
        ow, oh = short, int((raw if raw is not None else short) * height / width)
    elif (height <= width and height == short) or (width <= height and width == short):
        oh, ow = height, width
    else:
        oh, ow = short, int((raw if raw is not None else short) * width / height)
    return oh - oh % 16, ow - ow % 16


def yolos_settings(config: dict[str, Any], size: int | None) -> dict[str, Any]:
    """Settings of a YolosImageProcessor preprocessor_config.json (class defaults for missing
    keys: shortest edge 800, longest 1333, bilinear, ImageNet mean/std); `size` overrides the
    shortest edge."""
    cfg_size = config.get("size", {"shortest_edge": 800, "longest_edge": 1333})
    if isinstance(cfg_size, int):  # legacy: "size": 800, "max_size": 1333
        cfg_size = {"shortest_edge": cfg_size, "longest_edge": config.get("max_size", 1333)}
    if "shortest_edge" not in cfg_size:
        raise ValueError(f"preprocessor size {cfg_size} has no shortest_edge; expected a "
                         "YolosImageProcessor config")
    normalize = config.get("do_normalize", True)
    resample = config.get("resample", 2)
    if resample not in RESAMPLE:
        raise ValueError(f"resample={resample} is not one of {sorted(RESAMPLE)} (PIL codes)")
    return dict(
        short=(size or cfg_size["shortest_edge"]) if config.get("do_resize", True) else None,
        long=cfg_size.get("longest_edge"),
        mean=tuple(config.get("image_mean", (0.485, 0.456, 0.406))) if normalize else (0.0,) * 3,
        std=tuple(config.get("image_std", (0.229, 0.224, 0.225))) if normalize else (1.0,) * 3,
        mode=RESAMPLE[resample])


def yolos_preprocess(images: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> pixel values as YolosImageProcessor makes them (no padding is
    needed: all frames share one size)."""
    if settings["short"] is not None:
        oh, ow = yolos_size(*images.shape[-2:], settings["short"], settings["long"])
        images = resize_to(images, oh, ow, settings["mode"])
    # Only the normalisation of resize_crop_normalize applies: its resize is then a no-op.
    return resize_crop_normalize(images, min(images.shape[-2:]), None, settings["mean"],
                                 settings["std"], settings["mode"])


class ObjectDetection:
    """Per frame, the highest softmax probability any YOLOS detection query gives the target
    class (softmax over the classes plus "no object"), aggregated over frames.

    mode=maximize rewards p; mode=minimize rewards 1 - p (still in [0, 1], higher is better),
    to remove an object. The target is `object` for every video, or with `object=None` the
    longest COCO class name found in each prompt ('dogs' counts for 'dog').
    """

    differentiable = True

    def __init__(self, pretrained: str = "hustvl/yolos-tiny", object: str | None = None,
                 mode: str = "maximize", size: int | None = None, frames: str | int = "all",
                 aggregation: str = "mean", dtype: str = "fp32") -> None:
        from transformers import YolosForObjectDetection
        check_frames_option(frames)
        check_aggregation(aggregation)
        if mode not in MODES:
            raise ValueError(f"reward_fn.mode={mode!r}: use one of {MODES}")
        if size is not None and (not isinstance(size, int) or size < 16):
            raise ValueError(f"reward_fn.size={size!r}: use null (the processor's) or an int >= 16")
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.aggregation, self.mode = aggregation, mode
        key = "reward_fn.pretrained"
        check_source(Source(key, pretrained, "config.json"))
        self.settings = yolos_settings(read_json(
            Source(key, pretrained, "preprocessor_config.json", weights=False)), size)
        self.model = load_cached(YolosForObjectDetection, key, pretrained, dtype)
        self.id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.target = None if object is None else find_label(object, self.id2label,
                                                             "reward_fn.object")

    def _match(self, prompt: str) -> int:
        return label_in_text(prompt, self.id2label, "object", plurals=True, skip=("N/A",))

    def check_prompts(self, prompts: list[str]) -> None:
        """ValueError listing every prompt without a COCO class (none with `object` set)."""
        if self.target is None:
            check_prompt_labels(prompts, self._match, "COCO object", "reward_fn.object")

    def targets(self, prompts: list[str]) -> list[int]:
        if self.target is not None:
            return [self.target] * len(prompts)
        return [self._match(p) for p in prompts]

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        b, t = frames.shape[:2]
        targets = torch.tensor(self.targets(prompts), device=frames.device)
        param = next(self.model.parameters())
        if param.device != frames.device:
            self.model.to(frames.device)
        pixels = yolos_preprocess(flatten_frames(frames).float(), self.settings)
        logits = self.model(pixel_values=pixels.to(param.dtype)).logits.float()  # (B*T, Q, C+1)
        index = targets.repeat_interleave(t).view(-1, 1, 1).expand(-1, logits.shape[1], 1)
        p = logits.softmax(dim=-1).gather(2, index).squeeze(2).max(dim=1).values.view(b, t)
        per_frame = p if self.mode == "maximize" else 1 - p
        rewards = aggregate(per_frame, self.aggregation)
        return rewards.to(frames.dtype), {"object_prob_mean": p.detach().mean()}
