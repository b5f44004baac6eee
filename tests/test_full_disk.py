"""A checkpoint save that meets a really full disk (a small tmpfs, not a mocked error): whatever
the writer raises (torch.save: RuntimeError, safetensors: SafetensorError, the pointer:
OSError), the half-written checkpoint goes, the previous one stays `latest`, every process stops
with the message, and the same command resumes once there is space."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_reliability import RUN
from vader.loop import checkpoint as ckpt


def mount_tmpfs(folder, size: str):
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, and mounting one needs root")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed (no mount privilege in this container?): "
                    f"{proc.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(folder, size) mounts a tmpfs of `size` (e.g. "256k") at `folder`; every
    mount goes at the end of the test."""
    mounted = []

    def mount(folder, size: str):
        mount_tmpfs(folder, size)
        mounted.append(folder)
        return folder
    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def floats(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32)


def resize(folder, size: str) -> None:
    """What a user does about a full disk: make room (here, grow the filesystem)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def assert_step_1_is_latest(root) -> None:
    assert ckpt.latest_checkpoint(root).name == "step_000001"
    assert (root / "latest").read_text().strip() == "step_000001"
    assert [p.name for p in ckpt.checkpoints(root)] == ["step_000001"]
    assert not list(root.glob(".step_*")), "a temporary folder was left behind"
    assert ckpt.load_training_state(root / "step_000001")["step"] == 1
    assert torch.equal(ckpt.load_lora(root / "step_000001")["a"], floats(16384))


# 256 KiB: step 1 (64 KiB of LoRA, 64 KiB of state) fits, with about 110 KiB left.
@pytest.mark.parametrize("fails, lora, state", [
    ("pytorch_lora_weights.safetensors", 40_000, 10),  # safetensors: SafetensorError
    ("training_state.pt", 10, 40_000),  # torch.save: RuntimeError
])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, small_disk, fails, lora, state):
    root = small_disk(tmp_path / "checkpoints", "256k")
    ckpt.save_checkpoint(root, 1, {"a": floats(16384)}, {"step": 1, "x": floats(16384)})
    with pytest.raises(ckpt.CheckpointError, match=rf"could not write {fails} of checkpoint "
                                                   r".*step_000002 \(.*\)\. The previous "
                                                   r"checkpoint .*step_000001 is intact"):
        ckpt.save_checkpoint(root, 2, {"a": floats(lora)}, {"step": 2, "x": floats(state)})
    assert_step_1_is_latest(root)
    # The partial files went with the temporary folder: their space is free again.
    ckpt.save_checkpoint(root, 2, {"a": floats(12_000)}, {"step": 2, "x": floats(12_000)})
    assert ckpt.latest_checkpoint(root).name == "step_000002"


def test_a_full_disk_at_the_pointer_undoes_the_checkpoint(tmp_path, small_disk):
    """The new folder is complete, but `latest` cannot move: rather than a folder the pointer
    does not name, the save is undone and reported like any other failed write."""
    root = small_disk(tmp_path / "checkpoints", "256k")
    ckpt.save_checkpoint(root, 1, {"a": floats(16384)}, {"step": 1})
    # Leave inodes for the temporary folder and its two files, none for the pointer's file.
    filler = 0
    while os.statvfs(root).f_ffree > 3:
        (root / f".filler{filler}").touch()
        filler += 1
    with pytest.raises(ckpt.CheckpointError, match=r"could not write latest of checkpoint "
                                                   r".*step_000002 .*No space left on device"):
        ckpt.save_checkpoint(root, 2, {"a": floats(10)}, {"step": 2})
    for i in range(filler):
        (root / f".filler{i}").unlink()
    assert_step_1_is_latest(root)


def test_a_full_disk_during_training_stops_and_resumes(make_trainer, tmp_path, small_disk):
    """The tiny model's checkpoint is about 210 KiB of LoRA and 500 KiB of state: two fit in
    1800 KiB, and the third save (before pruning to two) runs out of space in torch.save."""
    root = small_disk(tmp_path / "run" / "checkpoints", "1800k")
    trainer = make_trainer(*RUN)
    trainer.setup()
    with pytest.raises(ckpt.CheckpointError, match=r"could not write training_state.pt of "
                                                   r"checkpoint .*step_000003 \(RuntimeError: .*\)"
                                                   r".*step_000002 is intact.*Free disk space"):
        trainer.train()
    assert ckpt.latest_checkpoint(root).name == "step_000002"
    assert not list(root.glob(".step_*")) and not (root / "step_000003").exists()
    resize(root, "4m")
    resumed = make_trainer(*RUN)
    resumed.setup()
    assert resumed.step == 2
    resumed.train()
    assert ckpt.latest_checkpoint(root).name == "step_000006"


@pytest.mark.slow
def test_a_full_disk_under_two_processes_stops_both(tmp_path, small_disk):
    """Rank 0's write fails; rank 1, waiting in the all-reduce after it, hears of it and raises
    too, instead of hanging there (or being killed by the launcher without a word)."""
    out = tmp_path / "two"
    root = small_disk(out / "run" / "checkpoints", "100k")  # less than one LoRA file
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.ddp_worker", str(out), "train_batch_size=1", "num_steps=2",
           "checkpoint_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    err = proc.stderr
    assert err.count("CheckpointError: could not write pytorch_lora_weights.safetensors of "
                     "checkpoint") == 1, err[-4000:]
    assert err.count("CheckpointError: the main process could not write the checkpoint") == 1, \
        err[-4000:]
    assert not list(root.iterdir())
