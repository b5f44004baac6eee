"""What keeps a long run from losing work or dying silently: stop signals turned into a clean
save-and-exit, non-finite updates skipped and counted, and checkpoints checked against the model
before they are loaded."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor


class Interrupted(SystemExit):
    """Raised after a stop signal once the checkpoint is saved: exits with 128 + the signal
    number, as a shell reports a process killed by it, so schedulers see a failed job."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGTERM (pre-emption) and SIGINT (Ctrl-C) set
    `stop.signum` instead of killing the process, so the training loop can finish its step and
    save. A second signal restores the default behaviour, so pressing Ctrl-C twice quits at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: stop waiting
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving a "
              "checkpoint (send it again to quit at once without saving)", file=sys.stderr,
              flush=True)

    def __enter__(self) -> "StopSignals":
        # Handlers can only be installed from the main thread (a notebook cell running training in
        # a thread still trains; it just cannot be stopped this way).
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, accelerator: Any) -> bool:
        """Whether any process was signalled (then `signum` is set on every one): all of them
        must stop at the same step."""
        import torch
        flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
        signum = int(accelerator.reduce(flag, "max").item())
        self.signum = signum or None
        return bool(signum)


class NonFiniteGuard:
    """Counts updates skipped because the loss, reward or gradients were not finite; too many
    in a row stop the run, since by then the weights or the learning rate are the problem.

    Under fp16, GradScaler's overflows are counted apart (`overflows`): while it looks for its
    scale (it starts at 65536 and halves at each overflow) several in a row are routine, so they
    neither count towards the limit nor break a run of non-finite updates."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total, self.overflows = limit, 0, 0, 0

    def record(self, skipped: str | None, step: int, what: str,
               last_checkpoint: Path | None) -> None:
        """`skipped`: why this update was skipped (see `update`), or None."""
        if skipped == "overflow":
            self.overflows += 1
            return
        if not skipped:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        if self.in_a_row >= self.limit:
            kept = f"the last checkpoint, {last_checkpoint}, is intact and finite. " \
                if last_checkpoint else "no checkpoint was written yet. "
            raise FloatingPointError(
                f"stopping: {self.in_a_row} updates in a row (steps {step - self.in_a_row + 1} to "
                f"{step}) had a non-finite "
                f"{what}; {kept}Lower lr or loss.grad_scale, keep max_grad_norm > 0, check the "
                "reward for NaN on these prompts, or raise max_nonfinite_in_a_row.")

    # Saved in the training state, so a resumed run stops after the same number in a row and
    # its logged totals continue instead of restarting at 0.
    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "total": self.total, "overflows": self.overflows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("in_a_row", "total", "overflows"):
            setattr(self, key, int(state.get(key, 0)))


def clipped_norm(accelerator: Any, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The gradients' total norm over every process, clipped to `max_norm` when it is positive.
    Under FSDP the gradients are shards and so is the norm torch computes; it is gathered whole."""
    if max_norm > 0:
        norm = accelerator.clip_grad_norm_(params, max_norm)
    else:
        accelerator.unscale_gradients()  # fp16: the true norm, and the scaler's inf check
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def update(accelerator: Any, optimizer: Any, non_finite: torch.Tensor,
           grad_norm: torch.Tensor) -> str | None:
    """Step the optimizer, or skip this update on every process; returns why it was skipped:
    "nonfinite" (a process saw a non-finite loss or reward, or the gradients, already averaged
    across processes, hold NaN or inf), "overflow" (fp16: GradScaler found inf in the scaled
    gradients and skipped the step itself, halving its scale), or None when it stepped.

    Under fp16 the gradients must already be unscaled (`clip_grad_norm_` or `unscale_gradients`)
    and the scaler must hear of every update, stepped or skipped: one it is not told about keeps
    its record of the unscale, and the next unscale raises "unscale_() has already been called"."""
    scaler = accelerator.scaler
    bad = non_finite > 0
    if scaler is None:  # with a scaler, a non-finite gradient is its business (below)
        bad = bad | ~torch.isfinite(grad_norm.detach().float())
    # One all-reduce: every process reaches the same answer, so their LoRAs stay identical.
    if accelerator.reduce(bad.float().reshape(1), "max").item() > 0:
        if scaler is not None:
            scaler.update()  # ends the iteration without a step (the scale halves if inf was seen)
        return "nonfinite"
    optimizer.step()  # with a scaler: skipped by it when the gradients overflowed
    if scaler is not None and optimizer.step_was_skipped:
        # At a scale below 1 the scaling can no longer be what overflowed: the gradient is.
        return "nonfinite" if scaler.get_scale() < 1 else "overflow"
    return None


def check_lora_fits(meta: dict[str, Any], expected: dict[str, Any], backbone: str, file: Path) -> None:
    """Refuse, by name, a LoRA saved for another backbone or with another rank, alpha or set of
    target modules, before its tensors meet the model as a wall of shape mismatches."""
    saved_backbone = meta.get("backbone")
    if saved_backbone and saved_backbone != backbone:
        raise ValueError(f"{file} holds a LoRA for backbone {saved_backbone!r}, not {backbone!r}; "
                         f"run with backbone={saved_backbone} or point lora_path at a checkpoint "
                         f"of {backbone!r}")
    names = {"unet.r": "lora_rank", "unet.lora_alpha": "lora_alpha",
             "unet.target_modules": "lora_target_modules"}
    for key, knob in names.items():
        if key in meta and key in expected and meta[key] != expected[key]:
            raise ValueError(f"{file} was saved with {knob}={meta[key]}, but this run has "
                             f"{knob}={expected[key]}; set {knob}={meta[key]} to load it")
