"""Checkpoints: LoRA weights as diffusers-loadable safetensors plus the training state needed to
resume exactly. Every file is written under a temporary name and renamed into place, and the
`latest` pointer moves only after a checkpoint is complete, so a crash never leaves a half-written
checkpoint where a resume would pick it up.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
STATE_FILE = "training_state.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(root: Path | str, step: int, lora: dict[str, torch.Tensor],
                    state: dict[str, Any] | None = None,
                    lora_metadata: dict[str, Any] | None = None) -> Path:
    """Write `root/step_XXXXXX/` and point `root/latest` at it. Returns the folder.

    `lora_metadata` (the backbone's LoRA rank/alpha/targets) goes into the safetensors header
    under diffusers' key, so `pipe.load_lora_weights(folder)` rebuilds the same adapter."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in lora.items()}, tmp / LORA_FILE,
              metadata=lora_file_metadata(step, lora_metadata))
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
    if final.exists():  # re-saving a step (a resumed run repeating its last save): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name + "\n")
    return final


def lora_file_metadata(step: int, lora_metadata: dict[str, Any] | None) -> dict[str, str]:
    metadata = {"format": "pt", "step": str(step)}
    if lora_metadata:
        # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY; read by `load_lora_weights`.
        metadata["lora_adapter_metadata"] = json.dumps(lora_metadata, sort_keys=True)
    return metadata


def latest_checkpoint(root: Path | str) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / LORA_FILE).is_file() else None


def resolve_lora_path(path: Path | str) -> Path:
    """Accept a checkpoint folder, a run's `checkpoints/` folder (its latest), a run directory, or
    a .safetensors file; raise FileNotFoundError saying what was looked for."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path, path / "checkpoints"):
        if (folder / LORA_FILE).is_file():
            return folder / LORA_FILE
        latest = latest_checkpoint(folder)
        if latest is not None:
            return latest / LORA_FILE
    raise FileNotFoundError(
        f"lora_path={str(path)!r}: no LoRA weights there (looked for {path} as a file, "
        f"{path / LORA_FILE}, and a 'latest' checkpoint under {path} or {path / 'checkpoints'}). "
        "Point lora_path at a checkpoint folder such as outputs/<run>/checkpoints/step_000040.")


def load_lora(path: Path | str) -> dict[str, torch.Tensor]:
    return load_file(resolve_lora_path(path))


def load_training_state(folder: Path | str) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
