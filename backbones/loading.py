"""Loading model parts from a Hugging Face hub id or a local folder, failing fast and clearly.

Every real backbone names its parts as sources (`damo-vilab/text-to-video-ms-1.7b`, or
`/models/ms-1.7b`) plus a subfolder. `check_sources` runs before any weight is read: a folder that
does not exist, a file missing from it, or a hub id that is neither cached nor reachable raises an
error that names the source, the config key that chose it, and how to provide it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str, key: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{key}={name!r} is not a dtype; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Source:
    """One file a backbone needs: `filename` inside `subfolder` of `location` (hub id or folder),
    chosen by config key `key` (named in errors)."""
    key: str
    location: str
    filename: str
    subfolder: str | None = None
    revision: str | None = None
    weights: bool = True  # expect weight files beside `filename` (False for a tokenizer)

    @property
    def relative(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    def is_local(self) -> bool:
        # A hub id is exactly `owner/name`; anything that exists on disk, or is spelled like a
        # path (absolute, ./, ~, or more than one slash), is a folder.
        loc = self.location
        return (Path(loc).expanduser().exists() or loc.startswith(("/", ".", "~"))
                or loc.count("/") != 1)


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def check_source(source: Source) -> str:
    """Return a local path to the file, downloading nothing but checking that it can be had:
    locally, in the hub cache, or (when online) on the hub. Raise FileNotFoundError otherwise."""
    if source.is_local():
        folder = Path(source.location).expanduser()
        if not folder.exists():
            raise FileNotFoundError(
                f"{source.key}={source.location!r}: no such folder. Point {source.key} at a "
                "diffusers-format folder (e.g. one written by `pipe.save_pretrained(folder)` or "
                "`huggingface-cli download <hub id> --local-dir folder`), or at a hub id "
                "such as owner/name")
        path = folder / source.relative
        if not path.is_file():
            raise FileNotFoundError(
                f"{source.key}={source.location!r}: {source.relative} is missing from that folder. "
                "Download the complete model into it, or point the key at the right folder")
        if source.weights and not any(path.parent.glob("*.safetensors")) \
                and not any(path.parent.glob("*.bin")):
            raise FileNotFoundError(
                f"{source.key}={source.location!r}: no weights (*.safetensors or *.bin) beside "
                f"{source.relative}. Download the complete model into that folder")
        return str(path)
    from huggingface_hub import file_exists, try_to_load_from_cache
    cached = try_to_load_from_cache(source.location, source.relative, revision=source.revision)
    if isinstance(cached, str):
        return cached
    if _offline():
        raise FileNotFoundError(
            f"{source.key}={source.location!r}: {source.relative} is not in the local Hugging Face "
            "cache and the hub is offline (HF_HUB_OFFLINE=1). On a machine with internet run "
            f"`huggingface-cli download {source.location}` (same HF_HOME), or download it to a "
            f"folder and set {source.key}=/path/to/folder")
    try:
        exists = file_exists(source.location, source.relative, revision=source.revision)
    except Exception as err:  # connection errors come in many classes; all mean the same here
        raise FileNotFoundError(
            f"{source.key}={source.location!r}: cannot reach the Hugging Face hub to fetch "
            f"{source.relative} ({type(err).__name__}: {err}). Check the network or HF_ENDPOINT, "
            f"or download it elsewhere and set {source.key}=/path/to/folder") from err
    if not exists:
        raise FileNotFoundError(
            f"{source.key}={source.location!r}: the hub repository has no {source.relative} "
            "(wrong repository, revision or subfolder?)")
    return f"hub:{source.location}/{source.relative}"


def fetch_file(source: Source) -> str:
    """Local path of one file: checked as `check_source` does, then downloaded into the hub
    cache if it is only on the hub."""
    path = check_source(source)
    if path.startswith("hub:"):
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(source.location, source.relative, revision=source.revision)
    return path


def check_sources(sources: list[Source]) -> None:
    """Check every source before anything is loaded, so a typo in the third part does not
    surface after minutes spent loading the first two."""
    for source in sources:
        check_source(source)


def load_part(cls: Any, source: Source, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """`cls.from_pretrained` on a checked source, with loading errors restated with the key."""
    if dtype is not None:
        # diffusers takes `torch_dtype`; transformers 5 renamed it `dtype`.
        kwargs["dtype" if cls.__module__.startswith("transformers") else "torch_dtype"] = dtype
    if cls.__module__.startswith("transformers"):
        # Every part is a concrete class, so no checkpoint's own code can run; saying so keeps it
        # that way if a class here is ever swapped for an Auto class.
        kwargs.setdefault("trust_remote_code", False)
    location = str(Path(source.location).expanduser()) if source.is_local() else source.location
    try:
        # subfolder "" rather than None: transformers 5 joins paths with it.
        return cls.from_pretrained(location, subfolder=source.subfolder or "",
                                   revision=source.revision, **kwargs)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{source.key}={source.location!r}: could not load "
                                f"{cls.__name__} from {source.subfolder or '.'}: {err}") from err


def load_scheduler_config(source: Source) -> dict[str, Any]:
    """A checkpoint's scheduler_config.json as a dict (class name and private keys dropped; the
    backbone's `scheduler` key picks the class)."""
    from diffusers import DDIMScheduler
    location = str(Path(source.location).expanduser()) if source.is_local() else source.location
    config = DDIMScheduler.load_config(location, subfolder=source.subfolder,
                                       revision=source.revision)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def part_source(key: str, override: str | None, pretrained: str, subfolder: str,
                filename: str = "config.json", revision: str | None = None,
                weights: bool = True) -> Source:
    """A part comes from `pretrained/<subfolder>` unless its own key names a folder or hub id
    holding that part alone (e.g. backbone.unet=/ckpt/my_unet)."""
    if override:
        return Source(key, override, filename, None, revision, weights)
    return Source("backbone.pretrained", pretrained, filename, subfolder, revision, weights)


def text_vae_sources(pretrained: str, revision: str | None, vae: str | None,
                     text_encoder: str | None) -> dict[str, Source]:
    """Sources of the parts every Stable-Diffusion-layout checkpoint has besides its denoiser."""
    return {
        "vae": part_source("backbone.vae", vae, pretrained, "vae", revision=revision),
        "text_encoder": part_source("backbone.text_encoder", text_encoder, pretrained,
                                    "text_encoder", revision=revision),
        "tokenizer": part_source("backbone.pretrained", None, pretrained, "tokenizer",
                                 "tokenizer_config.json", revision, weights=False),
        "scheduler": part_source("backbone.pretrained", None, pretrained, "scheduler",
                                 "scheduler_config.json", revision, weights=False),
    }


def load_text_vae(sources: dict[str, Source], vae_dtype: str, text_encoder_dtype: str,
                  variant: str | None) -> dict[str, Any]:
    """VAE, CLIP text encoder, tokenizer and scheduler config, as VideoUNetBackbone takes them."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer
    return dict(
        vae=load_part(AutoencoderKL, sources["vae"], parse_dtype(vae_dtype, "backbone.vae_dtype"),
                      variant=variant),
        text_encoder=load_part(CLIPTextModel, sources["text_encoder"],
                               parse_dtype(text_encoder_dtype, "backbone.text_encoder_dtype"),
                               variant=variant),
        tokenizer=load_part(CLIPTokenizer, sources["tokenizer"]),
        scheduler_config=load_scheduler_config(sources["scheduler"]))
