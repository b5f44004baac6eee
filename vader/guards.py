"""What keeps a long run from losing work or dying silently: stop signals turned into a clean
save-and-exit, non-finite updates skipped and counted, and checkpoints checked against the model
before they are loaded."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any


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


class NonFiniteGuard:
    """Counts updates skipped because the loss, reward or gradients were not finite; too many
    in a row stop the run, since by then the weights or the learning rate are the problem."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def record(self, skipped: bool, step: int, what: str, last_checkpoint: Path | None) -> None:
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
