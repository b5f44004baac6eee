"""Runs survive kills, signals, non-finite numbers, wrong checkpoints and full disks without
losing work, and say what happened and what to do."""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT, TINY
from vader.loop import checkpoint as ckpt
from vader.loop.guards import Interrupted
from vader.loop.tracking import MetricsLog

RUN = ["num_steps=6", "checkpoint_every=1", "keep_checkpoints=2"]


def lora_of(folder):
    return load_file(folder / ckpt.LORA_FILE)


def all_finite(root) -> bool:
    for folder in root.glob("step_*"):
        tensors = [*lora_of(folder).values()]
        state = ckpt.load_training_state(folder)
        tensors += [v for s in state["optimizer"]["state"].values() for v in s.values()
                    if isinstance(v, torch.Tensor)]
        if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            return False
    return True


def worker(run_dir, spec="-", background=False):
    cmd = [sys.executable, "-m", "tests.fault_worker", str(run_dir), spec, *RUN]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_anywhere_leaves_a_loadable_latest_and_resumes_to_the_same_weights(tmp_path):
    done = worker(tmp_path / "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = lora_of(ckpt.latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    rng = random.Random(0)
    # Kills injected at each moment of a save, then kills at random moments of training.
    trials = ["2:lora", "3:state", "4:renamed", "5:latest", "random", "random"]
    for i, spec in enumerate(trials):
        run_dir = tmp_path / f"trial{i}"
        if spec == "random":
            proc = worker(run_dir, background=True)
            metrics = run_dir / "metrics.jsonl"
            deadline = time.monotonic() + 300
            while not metrics.is_file() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 1.5))
            proc.kill()
            proc.communicate()
            assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
        else:
            killed = worker(run_dir, spec)
            assert killed.returncode == -signal.SIGKILL, (spec, killed.stderr[-3000:])
        root = run_dir / "checkpoints"
        latest = ckpt.latest_checkpoint(root)
        if spec != "random":  # a checkpoint was complete before the killed save began
            assert latest is not None, spec
        if latest is not None:  # it loads, and holds only finite numbers
            assert lora_of(latest) and ckpt.load_training_state(latest)["step"] >= 1
            assert all_finite(root)
        resumed = worker(run_dir)
        assert resumed.returncode == 0, (spec, resumed.stderr[-3000:])
        got = lora_of(ckpt.latest_checkpoint(root))
        assert got.keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=f"{spec}: {k}")
        assert len(ckpt.checkpoints(root)) <= 2 and not list(root.glob(".step_*")), spec


def signal_after_two_steps(cmd, env, run_dir, signum):
    """Start a training command, send it `signum` once two lines of metrics are written, and
    return (process, stdout, stderr) once it has exited."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while (not metrics.is_file() or len(metrics.read_text().splitlines()) < 2) \
            and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return proc, out, err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_a_checkpoint_and_exits_non_zero(tmp_path, signum):
    run_dir = tmp_path / "run"
    args = [sys.executable, "train.py", *[o for o in TINY if not o.startswith("run_name")],
            "num_steps=200", "checkpoint_every=1000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc, out, err = signal_after_two_steps(args, env, run_dir, signum)
    assert proc.returncode == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} at step" in err and "run the same command again" in err
    step = int(err.split(f"stopped by {name} at step ")[1].split()[0])
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest.name == ckpt.step_dir_name(step) and 2 <= step < 200
    assert ckpt.load_training_state(latest)["step"] == step
    # The same command resumes there (here with fewer steps to keep the test short).
    again = subprocess.run([*args, f"num_steps={step + 1}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {latest} at step {step}" in again.stdout


def poison(trainer, bad_steps):
    """Make the reward NaN while training steps in `bad_steps` (0-based) run. Call after setup:
    the algorithm scores with the reward it was set up with."""
    real = trainer.reward

    class Poisoned:
        frames, differentiable = real.frames, True

        def __call__(self, frames, prompts):
            values, info = real(frames, prompts)
            if trainer.step in bad_steps:
                values = values * float("nan")
            return values, info

    trainer.reward = trainer.algorithm.run.reward = Poisoned()


def test_a_nan_reward_is_skipped_and_counted(make_trainer, tmp_path):
    trainer = make_trainer(*RUN, "keep_checkpoints=0")
    trainer.setup()
    poison(trainer, {2})
    trainer.train()
    records = [r for r in trainer.metrics.read() if r["split"] == "train"]
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False]
    assert records[-1]["nonfinite_updates"] == 1 and math.isnan(records[2]["loss"])
    root = tmp_path / "run" / "checkpoints"
    assert all_finite(root)
    # The skipped update changed nothing: the LoRA after step 3 is the LoRA after step 2, and
    # the finite update after it did change it.
    step2, step3, step4 = (lora_of(root / ckpt.step_dir_name(s)) for s in (2, 3, 4))
    assert all(torch.equal(step2[k], step3[k]) for k in step2)
    assert any(not torch.equal(step3[k], step4[k]) for k in step3)
    assert trainer.nonfinite.total == 1


def test_a_nan_update_leaves_the_weights_unchanged(make_trainer):
    trainer = make_trainer(*RUN)
    trainer.setup()
    poison(trainer, {0})
    before = trainer.backbone.lora_state_dict()
    record = trainer.train_step()
    assert record["skipped"] and trainer.step == 1
    after = trainer.backbone.lora_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.lr_schedule.last_epoch == 0  # nor did the schedule advance


@pytest.mark.parametrize("clip", ["max_grad_norm=1.0", "max_grad_norm=0"])
def test_a_nan_gradient_with_a_finite_loss_is_skipped(make_trainer, clip):
    trainer = make_trainer(*RUN, clip)
    trainer.setup()
    hook = trainer.params[0].register_hook(lambda g: g * float("nan"))
    before = trainer.backbone.lora_state_dict()
    record = trainer.train_step()
    hook.remove()
    assert record["skipped"] and math.isfinite(record["loss"])
    after = trainer.backbone.lora_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not trainer.train_step()["skipped"]  # the next, finite update goes through


def test_nan_in_a_row_stops_with_a_clear_error(make_trainer, tmp_path):
    trainer = make_trainer(*RUN, "max_nonfinite_in_a_row=3", "keep_checkpoints=0")
    trainer.setup()
    poison(trainer, {2, 3, 4, 5})
    # Steps 3 and 4 were skipped but saved (their weights are step 2's, finite); step 5 stops.
    with pytest.raises(FloatingPointError, match=r"3 updates in a row \(steps 3 to 5\).*"
                                                 r"step_000004, is intact and finite"):
        trainer.train()
    root = tmp_path / "run" / "checkpoints"
    assert all_finite(root) and ckpt.latest_checkpoint(root).name == "step_000004"
    assert all(torch.equal(lora_of(root / "step_000002")[k], v)
               for k, v in lora_of(root / "step_000004").items())


def test_a_checkpoint_holding_nan_is_never_written(tmp_path):
    good = {"unet.a.lora_A.weight": torch.ones(2, 2)}
    ckpt.save_checkpoint(tmp_path, 1, good, {"step": 1})
    bad = {"unet.a.lora_A.weight": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}
    with pytest.raises(ckpt.CheckpointError, match="unet.a.lora_A.weight holds NaN"):
        ckpt.save_checkpoint(tmp_path, 2, bad, {"step": 2})
    with pytest.raises(ckpt.CheckpointError, match="optimizer.state.0.exp_avg holds NaN"):
        ckpt.save_checkpoint(tmp_path, 2, good, {"optimizer": {"state": {0: {"exp_avg": bad[
            "unet.a.lora_A.weight"]}}}})
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["step_000001"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000001"


def test_lora_of_another_rank_or_backbone_fails_by_name(make_trainer, tmp_path):
    trainer = make_trainer()
    trainer.setup()
    trainer.train()
    saved = tmp_path / "run" / "checkpoints" / "step_000002"
    other = make_trainer("lora_rank=4", f"lora_path={saved}", run_dir=tmp_path / "other")
    with pytest.raises(ValueError, match="saved with lora_rank=8, but this run has lora_rank=4; "
                                         "set lora_rank=8"):
        other.setup()
    # Resuming the same run directory with another rank fails the same way.
    resumed = make_trainer("lora_rank=4", "num_steps=3")
    with pytest.raises(ValueError, match="set lora_rank=8"):
        resumed.setup()
    # A LoRA written for another backbone.
    state = trainer.backbone.lora_state_dict()
    folder = ckpt.save_checkpoint(tmp_path / "foreign", 1, state, {"step": 1},
                                  trainer.backbone.lora_metadata(), backbone="animatediff")
    foreign = make_trainer(f"lora_path={folder}", run_dir=tmp_path / "foreign_run")
    with pytest.raises(ValueError, match="holds a LoRA for backbone 'animatediff', not 'tiny'; "
                                         "run with backbone=animatediff"):
        foreign.setup()
    # A bare file without our header (say from another tool) still fails by key, not by shape.
    bare = tmp_path / "bare.safetensors"
    save_file({k: v[:2].contiguous() for k, v in state.items()}, bare)
    with pytest.raises(ValueError, match=r"has shape .*\(is lora_rank the same"):
        make_trainer(f"lora_path={bare}", run_dir=tmp_path / "bare_run").setup()


class Died(Exception):
    pass


def test_resume_logs_each_step_once_and_keeps_the_skip_counts(make_trainer, monkeypatch):
    """Killed after step 3 was logged, resumed from step 2's checkpoint: metrics.jsonl (and the
    plot drawn from it) holds step 3 once, the evaluation at step 2 once, and the skipped
    update of step 1 is still counted."""
    args = (*RUN, "num_steps=4", "checkpoint_every=2", "val_every=2")
    trainer = make_trainer(*args)
    trainer.setup()
    poison(trainer, {0})
    real_step = type(trainer).train_step

    def dying_step(self):
        if self.step == 3:
            raise Died
        return real_step(self)

    monkeypatch.setattr(type(trainer), "train_step", dying_step)
    with pytest.raises(Died):
        trainer.train()
    monkeypatch.undo()
    resumed = make_trainer(*args)
    resumed.setup()
    assert resumed.step == 2
    counts = (resumed.nonfinite.total, resumed.nonfinite.in_a_row)
    resumed.train()
    records = resumed.metrics.read()
    assert [(r["split"], r["step"]) for r in records] == [
        ("train", 1), ("train", 2), ("val", 2), ("train", 3), ("train", 4), ("val", 4)]
    assert counts == (1, 0) and records[-2]["nonfinite_updates"] == 1


def test_metrics_truncate_drops_a_line_cut_short(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    for step in (1, 2, 3):
        log.write({"split": "train", "step": step})
    log.write({"split": "val", "step": 2})
    with log.path.open("a") as f:
        f.write('{"split": "train", "st')  # killed while writing
    log.truncate(2, keep_val_at_step=False)
    assert log.read() == [{"split": "train", "step": 1}, {"split": "train", "step": 2}]


def test_a_signal_during_an_evaluation_stops_right_after_it(make_trainer, tmp_path, monkeypatch):
    """The signal arrives while the evaluation after step 2 runs: the run saves step 2 and
    stops, instead of training (and waiting for) step 3 first."""
    trainer = make_trainer(*RUN, "val_every=2", "checkpoint_every=100")
    trainer.setup()
    monkeypatch.setattr(trainer, "_periodic_evaluation",
                        lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Interrupted) as stopped:
        trainer.train()
    assert stopped.value.signum == signal.SIGTERM
    assert trainer.step == 2 and "stopped by SIGTERM at step 2 of 6" in stopped.value.message
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_000002"


def test_corrupt_checkpoint_files_are_named(make_trainer, tmp_path):
    trainer = make_trainer()
    trainer.setup()
    trainer.train()
    folder = tmp_path / "run" / "checkpoints" / "step_000002"
    (folder / ckpt.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="training_state.pt is missing or unreadable"
                                                   ".*Delete .*step_000002"):
        make_trainer("num_steps=3").setup()
    (folder / ckpt.LORA_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ckpt.CheckpointError, match="pytorch_lora_weights.safetensors is not a "
                                                   "readable safetensors LoRA file"):
        make_trainer("only_val=true", f"lora_path={folder}", run_dir=tmp_path / "eval").setup()


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_training_state_is_loaded_without_unpickling_code(tmp_path):
    folder = tmp_path / "step_000001"
    folder.mkdir()
    torch.save({"step": 1, "evil": Payload()}, folder / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointError, match="unreadable .*could run code"):
        ckpt.load_training_state(folder)


def test_resume_option(make_trainer, tmp_path):
    trainer = make_trainer("num_steps=2", "checkpoint_every=1", "keep_checkpoints=0")
    trainer.setup()
    trainer.train()
    assert make_trainer("num_steps=3").__class__  # builds
    fresh = make_trainer("num_steps=3", "resume=never")
    fresh.setup()
    assert fresh.step == 0
    chosen = make_trainer("num_steps=3", f"resume={tmp_path / 'run' / 'checkpoints' / 'step_000001'}",
                          run_dir=tmp_path / "elsewhere")
    chosen.setup()
    assert chosen.step == 1
    with pytest.raises(ValueError, match="resume='/no/such': use auto .*never .*checkpoint folder"):
        make_trainer("resume=/no/such")


def test_prune_keeps_the_newest_and_latest(tmp_path):
    lora = {"unet.a.lora_A.weight": torch.ones(1)}
    for step in range(1, 6):
        ckpt.save_checkpoint(tmp_path, step, lora, {"step": step}, keep=2)
    assert sorted(p.name for p in ckpt.checkpoints(tmp_path)) == ["step_000004", "step_000005"]
    # A stale temporary folder from a killed save goes at the next save.
    (tmp_path / ".step_000006.tmp").mkdir()
    ckpt.save_checkpoint(tmp_path, 6, lora, {"step": 6}, keep=2)
    assert not list(tmp_path.glob(".step_*"))
    # Without the pointer, the newest complete folder is the latest.
    (tmp_path / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000006"


def test_no_remote_code_is_trusted(tmp_path, monkeypatch):
    """Loaders never let a checkpoint run its own code: transformers parts are loaded with
    trust_remote_code=False, and nothing in the library turns it on."""
    from transformers import CLIPModel

    from backbones.loading import Source, load_part
    from tests import tiny_clip

    seen = {}
    real = CLIPModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(spy))
    folder = tiny_clip.write_clip(tmp_path / "clip")
    load_part(CLIPModel, Source("reward_fn.pretrained", str(folder), "config.json"))
    assert seen["trust_remote_code"] is False
    sources = [p for d in ("vader", "backbones", "rewards") for p in (ROOT / d).rglob("*.py")]
    assert not [p for p in sources if "trust_remote_code=True" in p.read_text()]


@pytest.mark.slow
def test_sigterm_to_accelerate_launch_stops_every_rank_at_one_step(tmp_path):
    """A scheduler signals the launcher; it forwards SIGTERM to each rank, the ranks agree on
    the step to stop at, and the main process saves it."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
           *[o for o in TINY if not o.startswith("run_name")], "num_steps=500",
           "checkpoint_every=1000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc, _, err = signal_after_two_steps(cmd, env, run_dir, signal.SIGTERM)
    assert proc.returncode != 0
    assert err.count("received SIGTERM") == 2, err[-3000:]  # both ranks
    step = int(err.split("stopped by SIGTERM at step ")[1].split()[0])
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest.name == ckpt.step_dir_name(step)
    assert ckpt.load_training_state(latest)["step"] == step
