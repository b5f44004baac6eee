"""What the frozen encoders make of the training data, kept on disk: the VAE latents of each clip
and the text embeddings of each caption, so a clip is decoded and encoded once, not once per
epoch, and a second run with the same settings (or another run pointed at the same
`data.cache_dir`) encodes nothing.

An entry's key is a hash of everything that changes its value: the file's identity (absolute
path, size and modification time, so an edited or replaced video is encoded again), the span of
the video it covers, every frame-sampling setting (frame count, stride or fps, size, window and
its draw), and the encoder (the backbone's settings that decide the VAE and text encoder). A
setting that changes gives a new key, so nothing stale is ever read; old entries just stay
unused on disk (delete the folder to reclaim the space).

Entries are safetensors files written atomically (vader.io.files), so a crash never leaves half
an entry. Each process writes the entries of the samples it encoded itself: their keys are
distinct, and two processes that do encode the same clip write the same bytes under the same
name, so the project's only-the-main-process-writes rule (about run files two processes could
disagree on) has no reason to apply, and gathering latents to one process would cost a transfer
per sample for nothing. An entry that cannot be read is treated as absent and encoded again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

# Backbone settings that change how the model trains or runs, not what its VAE or text encoder
# output: changing them keeps the cache.
NOT_ENCODER_KEYS = frozenset({
    "lora_rank", "lora_alpha", "lora_target_modules", "lora_dropout", "gradient_checkpointing",
    "attention", "checkpoint_blocks", "scheduler", "scheduler_overrides", "decode_chunk"})


def encoder_identity(backbone_settings: dict[str, Any]) -> str:
    """The backbone's settings that decide its encoders (hub id or folder, revision, seed and
    sizes of a tiny build), as one canonical string for cache keys."""
    kept = {k: v for k, v in backbone_settings.items() if k not in NOT_ENCODER_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def file_identity(path: Path) -> dict[str, Any]:
    """Absolute path, size and modification time: a replaced or edited file gets a new key."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def make_key(**parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(),
                           digest_size=16).hexdigest()


class TensorCache:
    """A folder of tensors by kind ("latents", "text") and key; `root=None` caches nothing.
    Counts its hits and the entries it wrote (`hits`, `writes`)."""

    def __init__(self, root: Path | str | None):
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.writes = 0

    def path(self, kind: str, key: str) -> Path:
        # Two-character subfolders keep a million entries out of one directory listing.
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, key: str) -> torch.Tensor | None:
        if self.root is None:
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        file = self.path(kind, key)
        if not file.is_file():
            return None
        try:
            value = load_file(file)["value"]
        except (SafetensorError, OSError, KeyError):
            return None  # unreadable (a disk error, a foreign file): encode it again
        self.hits += 1
        return value

    def save(self, kind: str, key: str, value: torch.Tensor) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        from vader.io.files import atomic_write

        atomic_write(self.path(kind, key),
                     lambda tmp: save_file({"value": value.detach().contiguous().cpu()}, tmp))
        self.writes += 1
