"""fp16's GradScaler on a CPU: an overflow is the scaler's to skip, the next step still runs, and
its scale survives a resume.

accelerate ignores mixed_precision=fp16 on a CPU (no scaler, no autocast), which is why
check_settings refuses it there; these tests give the accelerator what it builds on a GPU (a
torch.amp.GradScaler, fp16 autocast, native_amp) with the CPU as the device."""
from __future__ import annotations

import math

import pytest
import torch

from tests.test_reliability import RUN, poison
from vader.loop import checkpoint as ckpt


def fp16_on_cpu(trainer, monkeypatch, init_scale: float) -> torch.amp.GradScaler:
    """Call before `trainer.setup()` (prepare hands the scaler to the optimizer)."""
    acc = trainer.accelerator
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    monkeypatch.setattr(acc, "scaler", scaler)
    monkeypatch.setattr(acc, "native_amp", True)
    # The shared AcceleratorState: read by unscale_gradients and autocast; restored after the test.
    monkeypatch.setattr(acc.state, "_mixed_precision", "fp16")
    return scaler


def overflow_once(trainer):
    """Make the next backward's gradients inf, as an fp16 overflow of the scaled loss does."""
    hook = trainer.params[0].register_hook(lambda g: hook.remove() or g * float("inf"))


@pytest.mark.parametrize("clip", ["max_grad_norm=1.0", "max_grad_norm=0"])
def test_an_overflow_is_skipped_by_the_scaler_and_training_goes_on(make_trainer, monkeypatch,
                                                                     clip):
    # One non-finite update in a row would stop the run: an overflow must not count as one.
    trainer = make_trainer(*RUN, clip, "max_nonfinite_in_a_row=1")
    scaler = fp16_on_cpu(trainer, monkeypatch, init_scale=256.0)
    trainer.setup()
    before = trainer.backbone.lora_state_dict()
    overflow_once(trainer)
    skipped = trainer.train_step()
    after = trainer.backbone.lora_state_dict()
    assert skipped["skipped"] and math.isfinite(skipped["loss"])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.lr_schedule.last_epoch == 0
    # The scaler heard of the skipped update, so this one unscales and steps.
    record = trainer.train_step()
    assert skipped["overflow_updates"] == 1 and skipped["nonfinite_updates"] == 0
    assert not record["skipped"] and record["loss_scale"] == scaler.get_scale() == 128.0
    assert math.isfinite(record["grad_norm"]) and record["grad_norm"] < 1e3  # unscaled
    stepped = trainer.backbone.lora_state_dict()
    assert any(not torch.equal(after[k], stepped[k]) for k in after)


def test_a_nan_reward_under_fp16_is_our_skip_and_the_scaler_goes_on(make_trainer, monkeypatch):
    trainer = make_trainer(*RUN)
    fp16_on_cpu(trainer, monkeypatch, init_scale=256.0)
    trainer.setup()
    poison(trainer, {0})
    assert trainer.train_step()["nonfinite_updates"] == 1
    assert not trainer.train_step()["skipped"]


def test_overflow_below_scale_one_counts_as_non_finite(make_trainer, monkeypatch):
    """At a scale under 1 the gradient itself is non-finite; skipping for ever would hide it."""
    trainer = make_trainer(*RUN, "max_nonfinite_in_a_row=1")
    fp16_on_cpu(trainer, monkeypatch, init_scale=1.0)
    trainer.setup()
    overflow_once(trainer)
    with pytest.raises(FloatingPointError, match=r"1 updates in a row \(steps 1 to 1\)"):
        trainer.train_step()


def test_scaler_and_skip_counters_are_resumed(make_trainer, monkeypatch, tmp_path):
    trainer = make_trainer(*RUN, "num_steps=2", "keep_checkpoints=0")
    scaler = fp16_on_cpu(trainer, monkeypatch, init_scale=256.0)
    trainer.setup()
    overflow_once(trainer)
    poison(trainer, {1})
    # Step 1 overflows (scale 128); step 2's NaN reward makes NaN gradients, which the scaler
    # also backs off from (64).
    trainer.train()
    state = ckpt.load_training_state(tmp_path / "run" / "checkpoints" / "step_000002")
    assert state["scaler"]["scale"] == scaler.get_scale() == 64.0
    assert state["nonfinite"] == {"in_a_row": 1, "total": 1, "overflows": 1}
    monkeypatch.undo()  # a new Accelerator checks the shared state against mixed_precision=no
    resumed = make_trainer(*RUN, "num_steps=3", "keep_checkpoints=0")
    scaler = fp16_on_cpu(resumed, monkeypatch, init_scale=256.0)
    resumed.setup()
    assert resumed.step == 2 and scaler.get_scale() == 64.0
    assert (resumed.nonfinite.total, resumed.nonfinite.in_a_row, resumed.nonfinite.overflows) \
        == (1, 1, 1)
