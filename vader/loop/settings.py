"""The checks of the shared numbers that need no model, and the Accelerator a run uses (the
trainer and vader.build both call them, before anything is built)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from vader.config import TrainConfig
from vader.io.video import SUPPORTED_SUFFIXES
from vader.loop import checkpoint as ckpt
from vader.loop.tracking import check_logger, tracker_kwargs
from vader.sampling.keyframes import keyframes_of
from vader.sampling.windows import windows_of


def check_settings(cfg: TrainConfig) -> None:
    """Everything about the shared numbers that can be checked before a model is built (each
    algorithm checks its own keys in `Algorithm.check`)."""
    check_logger(cfg.logger)
    positive = ("num_steps", "train_batch_size", "gradient_accumulation_steps", "val_batch_size",
                "num_val_seeds", "num_frames", "height", "width", "fps", "val_every",
                "checkpoint_every", "max_nonfinite_in_a_row", "num_inference_steps")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if f".{cfg.video_format}" not in SUPPORTED_SUFFIXES:
        raise ValueError(f"video_format={cfg.video_format!r}: choose one of "
                         f"{[s[1:] for s in SUPPORTED_SUFFIXES]}")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision={cfg.mixed_precision!r}: choose no, fp16 or bf16")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision=fp16 needs a GPU; use mixed_precision=bf16 or no on a CPU")
    if cfg.lora_path is not None:
        ckpt.resolve_lora_path(cfg.lora_path)  # fails now, not after the models are loaded
    if cfg.keep_checkpoints < 0:
        raise ValueError(f"keep_checkpoints={cfg.keep_checkpoints}: use 0 (keep all) or a positive number")
    if ckpt.resume_mode(cfg.resume) == "path":
        ckpt.resolve_lora_path(cfg.resume)
    windows = windows_of(getattr(cfg, "long", None))
    if windows is not None:
        windows.spans(cfg.num_frames)  # a video shorter than one window fails now
    keyframes = keyframes_of(getattr(cfg, "long", None))
    if keyframes is not None:
        keyframes.indices(cfg.num_frames)


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    # cpu=True when there is no GPU lets `accelerate launch --multi_gpu` run gloo processes on a
    # CPU, which is how the distributed tests run. Accumulation is the loop's own (an algorithm
    # says how many micro-batches an update has), so accelerate's counter stays at 1.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              **tracker_kwargs(cfg.logger, run_dir))
    check_engine(accelerator.distributed_type, getattr(accelerator.state, "fsdp_plugin", None))
    return accelerator


# DeepSpeed owns the optimizer step and its checkpoints, and FSDP1 flattens parameters, so the
# loop's skipped updates and whole-tensor checkpoints (vader/loop/sharding.py) do not hold there.
UNSUPPORTED_ENGINES = ("DEEPSPEED", "MEGATRON_LM")


def check_engine(distributed_type: Any, fsdp_plugin: Any = None) -> None:
    name = getattr(distributed_type, "value", str(distributed_type))
    if name in UNSUPPORTED_ENGINES:
        raise ValueError(f"accelerate launched this run with {name}, which the trainer does not support "
                         "(it would own the optimizer step and write its own checkpoints); use "
                         "configs/accelerate/fsdp.yaml to shard the frozen weights, or data parallel: "
                         "multi_gpu.yaml or multi_node.yaml (docs/distributed.md)")
    if name == "FSDP" and getattr(fsdp_plugin, "fsdp_version", 2) != 2:
        raise ValueError("accelerate launched this run with FSDP version 1, whose flattened parameters "
                         "the trainer does not checkpoint; set fsdp_version: 2 in the config file "
                         "(configs/accelerate/fsdp.yaml does)")
