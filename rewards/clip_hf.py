"""What the rewards built on a transformers `CLIPModel` share (`aesthetic`, `clip_score`,
`pickscore`): loading the model, its tokenizer and its image-processor settings once per process,
and differentiable image / text embeddings.

A model comes from `pretrained` (hub id or local folder holding config.json and weights); its
tokenizer and `preprocessor_config.json` come from `processor` (default: the same place; PickScore
keeps them in a separate repository). The image settings are read from that file, so a real
checkpoint's own values are used: `size` (shortest edge), `crop_size`, `image_mean`, `image_std`
and `resample` (PIL codes: 3 bicubic, 2 bilinear). Both the legacy form (`"size": 224`) and the
current one (`"size": {"shortest_edge": 224}`, `"crop_size": {"height": 224, "width": 224}`) work.

No `torch.no_grad` anywhere: the image path must carry gradients back to the frames. The text
path needs none either way (token ids and frozen weights require no grad, so autograd records
nothing there).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backbones.loading import Source, check_source, fetch_file, load_part, parse_dtype
from rewards.common import flatten_frames, resize_crop_normalize

RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resample codes -> torch interpolate modes


@dataclass(frozen=True)
class ImageSettings:
    """CLIPImageProcessor's settings, as `resize_crop_normalize` takes them."""
    size: int                     # shorter side after resizing
    crop: int | None              # centre crop side; None when do_center_crop is false
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str                     # "bicubic" or "bilinear"


def _side(value: Any, what: str, where: str) -> int:
    """An int, or a dict with one usable side (`shortest_edge`, or equal `height`/`width`)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and value["height"] == value.get("width"):
            return int(value["height"])
    raise ValueError(f"{where}: unsupported {what}={value!r}; expected an int, "
                     "{'shortest_edge': n} or a square {'height': n, 'width': n}")


def parse_image_settings(config: dict[str, Any], where: str = "preprocessor_config.json") -> ImageSettings:
    """ImageSettings from the contents of a CLIP preprocessor_config.json."""
    size = config.get("size", 224)
    if isinstance(size, dict) and "shortest_edge" not in size:
        # {"height", "width"} as `size` means a squashing resize, which is not CLIP's processor.
        raise ValueError(f"{where}: size={size!r} resizes to a fixed height and width; only "
                         "shortest-edge resizing (CLIPImageProcessor's) is supported")
    resample = config.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"{where}: resample={resample!r} is not supported; use 3 (bicubic) "
                         "or 2 (bilinear)")
    normalize = config.get("do_normalize", True)
    return ImageSettings(
        size=_side(size, "size", where),
        crop=_side(config.get("crop_size", 224), "crop_size", where)
        if config.get("do_center_crop", True) else None,
        mean=tuple(config.get("image_mean", (0.48145466, 0.4578275, 0.40821073))) if normalize else (0.0,) * 3,
        std=tuple(config.get("image_std", (0.26862954, 0.26130258, 0.27577711))) if normalize else (1.0,) * 3,
        mode=RESAMPLE[resample])


def read_image_settings(location: str, key: str) -> ImageSettings:
    """The settings in `location`'s preprocessor_config.json (folder, or hub id in the cache /
    downloadable). Raises FileNotFoundError naming `key` when it cannot be had."""
    source = Source(key, location, "preprocessor_config.json", weights=False)
    return parse_image_settings(json.loads(Path(fetch_file(source)).read_text()),
                                f"{key}={location!r}")


@dataclass
class Clip:
    """A frozen CLIPModel with the tokenizer and image settings that go with it."""
    model: Any          # transformers.CLIPModel, eval, requires_grad False
    tokenizer: Any      # transformers.CLIPTokenizer
    image: ImageSettings

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def to(self, device: torch.device) -> "Clip":
        """Move the model to `device` (once; the cached model is shared by every reward)."""
        if self.device != device:
            self.model.to(device)
        return self


_CACHE: dict[tuple[str, str, str], Clip] = {}


def _canonical(location: str) -> str:
    source = Source("", location, "")
    return str(Path(location).expanduser().resolve()) if source.is_local() else location


def load_clip(pretrained: str, processor: str | None, dtype: str, pretrained_key: str,
              processor_key: str, dtype_key: str = "reward_fn.dtype") -> Clip:
    """The CLIPModel at `pretrained` (in `dtype`) with the tokenizer and image settings at
    `processor` (None: `pretrained`), loaded once per process. Every source is checked before
    any weight is read."""
    from transformers import CLIPModel, CLIPTokenizer

    torch_dtype = parse_dtype(dtype, dtype_key)
    if processor is None:
        processor, processor_key = pretrained, pretrained_key
    key = (_canonical(pretrained), _canonical(processor), dtype)
    if key in _CACHE:
        return _CACHE[key]
    model_source = Source(pretrained_key, pretrained, "config.json")
    tokenizer_source = Source(processor_key, processor, "tokenizer_config.json", weights=False)
    check_source(model_source)
    check_source(tokenizer_source)
    image = read_image_settings(processor, processor_key)
    model = load_part(CLIPModel, model_source, torch_dtype)
    model.requires_grad_(False).eval()
    clip = Clip(model=model, tokenizer=load_part(CLIPTokenizer, tokenizer_source), image=image)
    _CACHE[key] = clip
    return clip


def _pooled(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and an output object whose
    `pooler_output` is the projected embedding in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def preprocess_images(images: torch.Tensor, settings: ImageSettings,
                      resize: str = "crop") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, crop, crop) model input, float32, differentiable, as
    CLIPImageProcessor makes it (shorter side to `size`, floored centre crop, normalise), or
    with resize="squash" the whole frame resized to the square (rewards.common.RESIZE_MODES)."""
    s = settings
    return resize_crop_normalize(images.float(), s.size, s.crop, s.mean, s.std, s.mode,
                                 resize=resize)


def preprocess(clip: Clip, frames: torch.Tensor, resize: str = "crop") -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1] -> (B*T, 3, crop, crop) model input, float32, differentiable."""
    return preprocess_images(flatten_frames(frames), clip.image, resize)


def image_features(clip: Clip, frames: torch.Tensor, resize: str = "crop") -> torch.Tensor:
    """Projected image embeddings (B*T, D), float32, not normalised; gradients reach `frames`."""
    clip.to(frames.device)
    pixels = preprocess(clip, frames, resize).to(clip.dtype)
    return _pooled(clip.model.get_image_features(pixel_values=pixels)).float()


def text_features(clip: Clip, prompts: list[str], device: torch.device) -> torch.Tensor:
    """Projected text embeddings (len(prompts), D), float32, not normalised. Prompts longer than
    the text model's context (77 tokens for real CLIP) are truncated, as CLIPProcessor does."""
    clip.to(device)
    max_length = min(clip.tokenizer.model_max_length,
                     clip.model.config.text_config.max_position_embeddings)
    tokens = clip.tokenizer(prompts, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(clip.device)
    return _pooled(clip.model.get_text_features(input_ids=tokens["input_ids"],
                                                attention_mask=tokens["attention_mask"])).float()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def frame_text_cosine(clip: Clip, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Cosine of each frame's image embedding with its video's prompt embedding: (B, T),
    float32, differentiable in `frames`."""
    images = normalize(image_features(clip, frames)).view(*frames.shape[:2], -1)
    texts = normalize(text_features(clip, prompts, frames.device))
    return (images * texts.unsqueeze(1)).sum(dim=-1)


def video_embedder(pretrained: str, dtype: str = "fp32"):
    """A video embedding for evaluation's diversity measure: the mean of the CLIP model's
    L2-normalised frame embeddings, `(B, T, C, H, W)` -> `(B, D)`."""
    clip = load_clip(pretrained, None, dtype, "eval_embedding", "eval_embedding", "eval_embedding")

    def embed(frames: torch.Tensor) -> torch.Tensor:
        return normalize(image_features(clip, frames)).view(*frames.shape[:2], -1).mean(1)

    return embed
