"""Checkpoints that survive being killed at any moment.

A checkpoint is a folder `step_XXXXXX/` with the LoRA weights (diffusers-loadable safetensors)
and the training state needed to resume exactly. It is written into a hidden temporary folder,
flushed to disk, and renamed into place in one step, so a folder named `step_XXXXXX` is always
complete; the `latest` pointer moves only after that. A kill at any moment therefore leaves the
previous checkpoint, or the new one, and `latest_checkpoint` finds a complete one even if the
pointer itself is missing. Nothing non-finite is ever written, and a failed write (a full disk)
removes its temporary folder and leaves every earlier checkpoint as it was.

Loading never unpickles code: the LoRA is safetensors, and the state is read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vader.io.files import atomic_write_text

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for
STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step_(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the fix."""


def resume_mode(resume: str) -> str:
    """`auto` (the run directory's latest complete checkpoint, if any), `never`, or `path`."""
    value = str(resume)
    if value.lower() in ("auto", "true"):
        return "auto"
    if value.lower() in ("never", "false", "no", "none"):
        return "never"
    if not Path(value).exists():
        raise ValueError(f"resume={value!r}: use auto (the run directory's latest checkpoint), "
                         "never (start over), or the path of a checkpoint folder")
    return "path"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync(path: Path) -> None:
    # A rename is only durable once the data it points at is; without this a power cut can
    # leave a complete-looking folder of empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_non_finite(tensors: Any, where: str = "") -> str | None:
    """The name of the first tensor in a nested dict/list holding NaN or inf, else None."""
    if isinstance(tensors, torch.Tensor):
        if tensors.is_floating_point() and not torch.isfinite(tensors).all():
            return where or "tensor"
        return None
    items = tensors.items() if isinstance(tensors, dict) else \
        enumerate(tensors) if isinstance(tensors, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def save_checkpoint(root: Path | str, step: int, lora: dict[str, torch.Tensor],
                    state: dict[str, Any] | None = None,
                    lora_metadata: dict[str, Any] | None = None, keep: int = 0,
                    backbone: str | None = None) -> Path:
    """Write `root/step_XXXXXX/`, point `root/latest` at it, and keep the newest `keep`
    checkpoints (0: all). Returns the folder.

    `lora_metadata` (the backbone's LoRA rank/alpha/targets) goes into the safetensors header
    under diffusers' key, so `pipe.load_lora_weights(folder)` rebuilds the same adapter."""
    bad = _first_non_finite(lora) or _first_non_finite(state or {})
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {step_dir_name(step)}: {bad} holds NaN "
                              "or inf. The previous checkpoint is intact; lower lr or keep "
                              "max_grad_norm > 0 and resume from it.")
    root = Path(root)
    final = root / step_dir_name(step)
    tmp, old = root / f".{final.name}.tmp", root / f".{final.name}.old"
    current, placed, moved_aside = root, False, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        current = tmp / LORA_FILE
        save_file({k: v.detach().contiguous().cpu() for k, v in lora.items()}, current,
                  metadata=lora_file_metadata(step, lora_metadata, backbone))
        _fsync(current)
        if state is not None:
            current = tmp / STATE_FILE
            torch.save(state, current)
            _fsync(current)
        _fsync(tmp)
        # Re-saving a step (a run resumed from before it): the old folder moves aside first, so
        # a folder of that name is complete at every moment.
        current = final
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
            moved_aside = True
        os.replace(tmp, final)
        placed = True
        _fsync(root)
        current = root / "latest"
        atomic_write_text(current, final.name + "\n", fsync=True)
    # Any exception, not just OSError: a full disk makes torch.save raise RuntimeError and
    # safetensors raise SafetensorError, and either way the folder must not stay half-written.
    except Exception as err:  # noqa: BLE001
        _undo(tmp, final, old, placed, moved_aside)
        previous = latest_checkpoint(root)
        kept = f"The previous checkpoint {previous} is intact. " if previous else ""
        raise CheckpointError(
            f"could not write {current.name} of checkpoint {final} ({_reason(err)}). {kept}"
            "Free disk space (or move the run elsewhere) and run the same command again: it "
            "resumes from the latest complete checkpoint.") from err
    shutil.rmtree(old, ignore_errors=True)
    if keep > 0:
        prune(root, keep)
    return final


def _undo(tmp: Path, final: Path, old: Path, placed: bool, moved_aside: bool) -> None:
    """Put the folder back as it was before a failed save: no temporary folder, no new step
    folder that `latest` does not name, and a re-saved step's previous folder in its place."""
    shutil.rmtree(tmp, ignore_errors=True)
    if placed:
        shutil.rmtree(final, ignore_errors=True)
    if moved_aside:
        try:
            os.replace(old, final)
        except OSError:
            pass  # `latest_checkpoint` falls back to the newest complete folder


def _reason(err: Exception) -> str:
    # torch.save's message runs to several lines of C++ context; its first line says enough.
    text = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def save_on_main(accelerator: Any, write: Callable[[], Path]) -> Path | None:
    """Call `write()` on the main process only; if it raises, every process raises together.

    Whatever `write` raises is caught, so the main process reaches the all-reduce below in every
    case: one that raised before it would leave the others waiting in it for ever (or until a
    launcher kills them, without a word on what happened). The main process re-raises its own
    error; the others raise a CheckpointError pointing at it. Returns the folder on the main
    process, None on the others."""
    accelerator.wait_for_everyone()
    folder, error = None, None
    if accelerator.is_main_process:
        try:
            folder = write()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the collective
            error = err
    flag = torch.tensor([float(error is not None)], device=accelerator.device)
    failed = accelerator.reduce(flag, "max").item() > 0
    if error is not None:
        raise error
    if failed:
        raise CheckpointError("the main process could not write the checkpoint; its message "
                              "(above or in its log) says why")
    return folder


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names), and any
    temporary folder a killed save left behind. Returns what was deleted."""
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else None
    steps = sorted(checkpoints(root), key=lambda p: int(STEP_DIR.match(p.name).group(1)))
    doomed = [p for p in steps[:-keep] if p.name != named]
    doomed += [p for p in root.glob(".step_*") if p.is_dir()]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def lora_file_metadata(step: int, lora_metadata: dict[str, Any] | None,
                       backbone: str | None = None) -> dict[str, str]:
    metadata = {"format": "pt", "step": str(step)}
    if backbone:
        metadata["backbone"] = backbone  # so loading into another backbone fails by name
    if lora_metadata:
        # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY; read by `load_lora_weights`.
        metadata["lora_adapter_metadata"] = json.dumps(lora_metadata, sort_keys=True)
    return metadata


def checkpoints(root: Path | str) -> list[Path]:
    """The complete checkpoint folders under `root` (hidden temporary ones are not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / LORA_FILE).is_file()]


def latest_checkpoint(root: Path | str) -> Path | None:
    """The folder `latest` names; if the pointer is missing or names no complete checkpoint (a
    run killed between the rename and the pointer), the newest complete `step_*` folder."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if STEP_DIR.match(path.name) and (path / LORA_FILE).is_file():
            return path
    found = checkpoints(root)
    return max(found, key=lambda p: int(STEP_DIR.match(p.name).group(1))) if found else None


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
    file = resolve_lora_path(path)
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors LoRA file ({err}). Point "
                              "lora_path at another checkpoint, or delete this one to resume from "
                              "the one before it.") from err


def read_lora_metadata(path: Path | str) -> dict[str, Any]:
    """The LoRA configuration stored in a checkpoint's header: `unet.r`, `unet.lora_alpha`,
    `unet.target_modules`, and `backbone` where the file was written by this library ({} for a
    file without it)."""
    file = resolve_lora_path(path)
    try:
        with safe_open(file, framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is not a readable safetensors LoRA file ({err})") from err
    meta = json.loads(header.get("lora_adapter_metadata", "{}"))
    if "backbone" in header:
        meta["backbone"] = header["backbone"]
    return meta


def load_training_state(folder: Path | str) -> dict[str, Any]:
    """The optimizer, schedule, step and RNG state, read without unpickling any code."""
    file = Path(folder) / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        if isinstance(err, pickle.UnpicklingError):
            reason = ("it is corrupt, or holds objects other than tensors and plain values, which "
                      "are refused because unpickling them could run code")
        else:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(
            f"{file} is missing or unreadable ({reason}). Delete {folder} to resume from the "
            "checkpoint before it, or run with resume=never to start over (lora_path=<folder> "
            "starts from its LoRA weights alone).") from err
