"""HPS (Human Preference Score) v2 and v2.1: cosine similarity of an open_clip ViT-H-14's image and
text embeddings, fine-tuned on human preference pairs. Scored per frame, aggregated per video.

X. Wu et al., "Human Preference Score v2", arXiv:2306.09341; weights at hub repo `xswu/HPSv2`
(`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`). The checkpoint holds every weight, so the
architecture is built empty (no laion download) and the checkpoint loaded into it. The score is
what `hpsv2.score` returns (image_features @ text_features.T, without logit_scale); the `hpsv2`
package itself is not used (it vendors an old open_clip).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from backbones.loading import Source, fetch_file, parse_dtype
from rewards import check_frames
from rewards.common import (aggregate, check_aggregation, check_resize, flatten_frames,
                            resize_crop_normalize)

HUB_ID = "xswu/HPSv2"
FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}

_CACHE: dict[tuple[str, str, torch.dtype], tuple[Any, Any]] = {}  # (file, arch, dtype) -> model, tokenizer


def hps_state_dict(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    """The model weights of an HPS checkpoint: the published `{'state_dict': {'module.' + k: v}}`
    (DDP-wrapped at training time), the same without `module.`, or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(
            f"{path}: not an HPS checkpoint; expected a dict with key 'state_dict' mapping weight "
            f"names to tensors (or such a state dict itself), got {type(checkpoint).__name__}"
            + (f" with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, dict) else ""))
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load(path: str, model_name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    import open_clip
    # pretrained=None builds the architecture with random weights; the checkpoint replaces them all.
    # load_weights=False: a `local-dir:` architecture folder is read for its config only.
    model = open_clip.create_model(model_name, pretrained=None, load_weights=False,
                                   pretrained_text=False, precision="fp32")
    state = hps_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit open_clip architecture {model_name!r} "
                         f"(reward_fn.model_name): {err}") from err
    model.requires_grad_(False).eval().to(dtype)
    return model, open_clip.get_tokenizer(model_name)


class HPS:
    """HPSv2 / HPSv2.1 score in about [0.2, 0.35] for real checkpoints; higher is preferred."""

    differentiable = True

    def __init__(self, pretrained: str = HUB_ID, version: str = "v2.1", model_name: str = "ViT-H-14",
                 frames: str | int = "all", aggregation: str = "mean", dtype: str = "fp32",
                 resize: str = "crop") -> None:
        if version not in FILES:
            raise ValueError(f"reward_fn.version={version!r}: use one of {sorted(FILES)}")
        check_aggregation(aggregation)
        check_resize(resize)
        self.resize = resize
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.aggregation = aggregation
        self.dtype = parse_dtype(dtype, "reward_fn.dtype")
        source = Source("reward_fn.pretrained", pretrained, FILES[version], weights=False)
        path = fetch_file(source)  # FileNotFoundError naming the key before anything loads
        key = (str(Path(path).resolve()), model_name, self.dtype)
        if key not in _CACHE:
            _CACHE[key] = _load(path, model_name, self.dtype)
        self.model, self.tokenizer = _CACHE[key]
        # open_clip's eval transform settings for this architecture (ViT-H-14: 224, bicubic,
        # shortest side, OpenAI mean/std).
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        if cfg.get("resize_mode", "shortest") != "shortest" or \
                (not isinstance(cfg["size"], int) and len(set(cfg["size"])) != 1):
            raise ValueError(f"reward_fn.model_name={model_name!r}: only square inputs resized by "
                             f"the shortest side are supported, got {cfg}")
        self.size, self.mean, self.std = size, tuple(cfg["mean"]), tuple(cfg["std"])
        self.interpolation = cfg.get("interpolation", "bicubic")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> the model's input, differentiably, as open_clip's eval
        transform (torchvision Resize(size) + CenterCrop(size) + Normalize) makes it; with
        resize="squash" the whole frame is resized to the square instead, as VADER does."""
        return resize_crop_normalize(images, self.size, self.size, self.mean, self.std,
                                     mode=self.interpolation, crop_rounding="round",
                                     resize=self.resize)

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        b, t = frames.shape[:2]
        if self.model.logit_scale.device != frames.device:  # the trainer never moves rewards
            self.model.to(frames.device)
        with torch.no_grad():  # the prompts are constants; gradients only flow to the frames
            text = self.model.encode_text(self.tokenizer(prompts).to(frames.device), normalize=True)
        images = self.preprocess(flatten_frames(frames).float()).to(self.dtype)
        image = self.model.encode_image(images, normalize=True).float()  # (B*T, D)
        per_frame = (image.view(b, t, -1) * text.float().unsqueeze(1)).sum(-1)  # (B, T) cosines
        rewards = aggregate(per_frame, self.aggregation)
        return rewards.to(frames.dtype), {"hps_mean": rewards.detach().float().mean(),
                                          "hps_frame_min": per_frame.detach().min()}
