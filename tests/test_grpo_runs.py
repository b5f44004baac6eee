"""GRPO runs end to end: two processes train one LoRA equal to one process on the same global
batch, a resumed run ends where an uninterrupted one does, and on a reward computed without
gradients it raises the held-out reward."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distributed import run

# One group of 4 spanning both processes (videos 0-1 on rank 0, 2-3 on rank 1), 2 videos per
# network call either way, 3 steps.
ARGS = ["algorithm=grpo", "algorithm.group_size=4", "algorithm.groups_per_step=1",
        "train_batch_size=2", "num_steps=3", "checkpoint_every=3", "reward_fn=compressibility"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "tests.ddp_worker", str(two), *ARGS], tmp_path)
    run([sys.executable, "-m", "tests.ddp_worker", str(one), *ARGS], tmp_path)
    loras = [load_file(two / f"lora_rank{r}.safetensors") for r in (0, 1)]
    single = load_file(one / "lora_rank0.safetensors")
    for k in single:
        assert torch.equal(loras[0][k], loras[1][k]), f"ranks disagree on {k}"
    # Every process holds the same advantages, those of one process on the same videos.
    advantages = [load_file(two / f"advantages_rank{r}.safetensors")["advantages"] for r in (0, 1)]
    alone = load_file(one / "advantages_rank0.safetensors")["advantages"]
    assert torch.equal(advantages[0], advantages[1])
    torch.testing.assert_close(advantages[0], alone, rtol=0, atol=1e-5)
    # As for reward gradients (tests/test_distributed.py): Adam amplifies float-order noise in
    # near-zero gradient elements, so nearly every element within 1% of a step, none beyond 20%.
    diff = torch.cat([(loras[0][k] - single[k]).abs().flatten() for k in single])
    moved = torch.cat([single[k].abs().flatten() for k in single])
    assert moved.max() > 1e-3  # it trained
    assert (diff > 1e-4).float().mean() < 1e-3, f"{int((diff > 1e-4).sum())} of {diff.numel()}"
    assert diff.max() < 2e-3


class Interrupt(Exception):
    pass


def test_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch):
    args = [*ARGS[:4], "num_steps=4", "checkpoint_every=2", "reward_fn=compressibility",
            "algorithm.inner_epochs=2"]
    straight = make_trainer(*args, run_dir=tmp_path / "straight")
    straight.setup()
    straight.train()
    expected = straight.backbone.lora_state_dict()

    interrupted = make_trainer(*args, run_dir=tmp_path / "resumed")
    interrupted.setup()
    real_step = type(interrupted).train_step

    def dying_step(self):
        if self.step == 3:  # step 2's checkpoint is written; die midway through the next one
            raise Interrupt
        return real_step(self)

    monkeypatch.setattr(type(interrupted), "train_step", dying_step)
    with pytest.raises(Interrupt):
        interrupted.train()
    monkeypatch.undo()

    resumed = make_trainer(*args, run_dir=tmp_path / "resumed")
    resumed.setup()
    assert resumed.step == 2
    resumed.train()
    got = resumed.backbone.lora_state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(got[k], interrupted.backbone.lora_state_dict()[k]) for k in got)
