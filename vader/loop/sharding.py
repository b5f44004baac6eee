"""What the loop does differently when accelerate shards the trainable module (FSDP2,
`configs/accelerate/fsdp.yaml`). There each parameter, LoRA and frozen, is a DTensor holding this
process's slice, and so is its optimizer state; every forward pass gathers the weights it uses from
all processes. Four consequences, each handled here so DDP and one process run unchanged (plain
tensors pass through every function below untouched):

- A checkpoint holds whole tensors, gathered on every process (a collective: all call it, in the
  same order), so it is the same file under every engine and resumes under any other.
- A loaded checkpoint is cut back into this process's slices of the current parameters.
- Every process makes the same number of forward passes, or the gathers wait for ever: an update
  repeats its last micro-batch, with no weight, up to the largest count of any process (and the
  evaluation gives a process with no video left a stand-in, vader/evaluation/evaluate.py).
- The denoiser's blocks are its shard groups (`block_classes`), unless the config file names
  classes (`fsdp_transformer_layer_cls_to_wrap`).

torch's own `torch.distributed.checkpoint.state_dict` does the gathering too, but keys its
optimizer state by parameter name, not by index as `optimizer.state_dict()` does, so checkpoints
written before would no longer load; these few lines keep today's format.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.distributed.tensor import DTensor, distribute_tensor


def lockstep(accelerator: Any) -> bool:
    """Whether every process must make the same forward passes (the weights are sharded)."""
    return getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type)) == "FSDP"


def whole(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with every sharded tensor gathered whole (collective under FSDP)."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def whole_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with whole tensors: today's checkpoint format on any engine."""
    state = optimizer.state_dict()
    return {**state, "state": {i: whole(s) for i, s in state["state"].items()}}


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor, the same on every process) cut to this process's slice when
    `reference` is sharded; otherwise `value` itself. No communication: each process keeps its
    part of a tensor it already holds."""
    if not isinstance(reference, DTensor) or isinstance(value, DTensor):
        return value
    return distribute_tensor(value.to(reference.device_mesh.device_type), reference.device_mesh,
                             reference.placements, src_data_rank=None)


def shard_like(state: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors from a file cut like the current ones of the same names."""
    return {k: like(v, current[k]) if k in current else v for k, v in state.items()}


def shard_optimizer_state(state: dict[str, Any], params: list[torch.Tensor]) -> dict[str, Any]:
    """A whole `optimizer.state_dict()` cut like `params` (the optimizer's parameters in order):
    each per-parameter tensor shaped like its parameter (Adam's moments) becomes a slice; scalars
    (the step count) stay as they are."""
    def cut(i: int, s: dict) -> dict:
        p = params[i] if i < len(params) else None
        return {k: like(v, p) if p is not None and torch.is_tensor(v) and v.shape == p.shape else v
                for k, v in s.items()}

    return {**state, "state": {i: cut(int(i), s) for i, s in state["state"].items()}}


def largest_count(accelerator: Any, count: int) -> int:
    """The most micro-batches any process holds in this update (one small all-gather), under
    FSDP; elsewhere `count`."""
    if not lockstep(accelerator):
        return count
    counts = accelerator.gather(torch.tensor([count], device=accelerator.device))
    return int(counts.max())


def block_classes(model: nn.Module) -> list[str]:
    """The classes FSDP gives a shard group of their own, each gathered for its forward pass and
    freed after: every element of the model's top-level ModuleLists (a UNet's down and up
    blocks, a transformer's blocks) and every other top-level child that holds a ModuleList (a
    UNet's mid block). Written here because accelerate's other rule, a size threshold, also picks
    ModuleLists, which `fully_shard` refuses (they have no forward), and diffusers names blocks
    (`_no_split_modules`) for some models only."""
    names: list[str] = []
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            members = list(child)
        else:
            members = [child] if any(isinstance(m, nn.ModuleList) for m in child.children()) else []
        names += [type(m).__name__ for m in members]
    return list(dict.fromkeys(names))  # each once, in order


def name_blocks(accelerator: Any, model: nn.Module) -> None:
    """Before `prepare` under FSDP with transformer-based wrapping: shard groups by
    `block_classes(model)` where the config file names none."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if not lockstep(accelerator) or plugin is None or plugin.transformer_cls_names_to_wrap is not None:
        return
    if getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is transformer_auto_wrap_policy:
        plugin.transformer_cls_names_to_wrap = block_classes(model)


def describe(accelerator: Any) -> str | None:
    """The engine line a run on several processes, or under FSDP, prints at its start."""
    n = accelerator.num_processes
    if lockstep(accelerator):
        groups = accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap or ["accelerate's own"]
        return f"engine: FSDP2 over {n} process(es), shard groups {', '.join(groups)}"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":  # asked for, and not given
        return (f"engine: {'data parallel over ' if n > 1 else ''}{n} process(es), not FSDP: accelerate runs "
                "FSDP only on GPUs (or other accelerators)")
    return f"engine: data parallel over {n} processes" if n > 1 else None
