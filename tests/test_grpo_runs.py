"""GRPO runs end to end: two processes train one LoRA equal to one process on the same global
batch, a resumed run ends where an uninterrupted one does, and on a reward computed without
gradients it raises the held-out reward."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.learning import SEEDS, assert_learns, train
from tests.test_distributed import assert_ranks_match_one, run
from tests.test_training import check_resume_matches_uninterrupted

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
    # Every process holds the same advantages, those of one process on the same videos.
    advantages = [load_file(two / f"advantages_rank{r}.safetensors")["advantages"] for r in (0, 1)]
    alone = load_file(one / "advantages_rank0.safetensors")["advantages"]
    assert torch.equal(advantages[0], advantages[1])
    torch.testing.assert_close(advantages[0], alone, rtol=0, atol=1e-5)
    assert_ranks_match_one(two, one)


def test_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch):
    check_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch, *ARGS[:4],
                                       "num_steps=4", "checkpoint_every=2",
                                       "reward_fn=compressibility", "algorithm.inner_epochs=2")


@pytest.mark.slow
def test_a_sweep_compares_the_algorithms(tmp_path):
    """`python train.py -m algorithm=reward_grad,grpo`, summarised by `python -m vader.sweep`."""
    import json

    from tests.conftest import TINY
    from tests.test_evaluation import read_csv

    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if not a.startswith("run_name=")]
    run([sys.executable, "train.py", "-m", "algorithm=reward_grad,grpo", *tiny,
         f"hydra.sweep.dir={sweep}"], tmp_path)
    run([sys.executable, "-m", "vader.sweep", str(sweep)], tmp_path)
    rows = read_csv(sweep / "sweep_summary.csv")
    assert sorted(r["algorithm"] for r in rows) == ["grpo", "reward_grad"]
    for row in rows:
        assert row["status"] == "complete" and int(row["steps"]) == 2
        summary = json.loads((sweep / row["run"] / "eval" / "summary.json").read_text())
        assert float(row["tuned/colorfulness"]) == \
            summary["per_model"]["tuned"]["reward/colorfulness"]["mean"]


@pytest.mark.slow
def test_grpo_raises_the_held_out_mean_of_a_reward_without_gradients(tmp_path):
    """Setting `grpo_no_gradient` (tests/learning.py): brightness computed under no_grad and
    declared not differentiable, 15 GRPO steps of 16 videos. Held-out brightness gains measured
    with `python -m benchmarks.learning_margins --settings grpo_no_gradient --seeds 0 1 2 3`
    (torch 2.14.1, 2 threads, 2026-12-06): base 0.5112 -> +0.0114, +0.0171, +0.0206, +0.0162
    (mean +0.0163, all 4 improved; 30 steps gave +0.0295, +0.0271, +0.0205, +0.0230 at 2.5x the
    time); asserted: a majority of seeds 0-2 and a mean gain of 0.006, half the smallest."""
    outcomes = [train("grpo_no_gradient", {}, seed, tmp_path / f"seed{seed}") for seed in SEEDS]
    assert_learns(outcomes, min_mean_gain=0.006)


def test_a_nan_reward_skips_the_grpo_update_on_the_common_path(make_trainer):
    """The loop's guard serves GRPO unchanged: a NaN reward makes that step's update non-finite,
    so it is skipped and counted, and the next step trains."""
    from tests.test_reliability import poison

    trainer = make_trainer(*ARGS[:4], "num_steps=2")
    trainer.setup()
    poison(trainer, {0})
    before = trainer.backbone.lora_state_dict()
    first = trainer.train_step()
    assert first["skipped"] and first["nonfinite_updates"] == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.backbone.lora_state_dict().items())
    second = trainer.train_step()
    assert not second["skipped"]
    assert any(not torch.equal(before[k], v) for k, v in trainer.backbone.lora_state_dict().items())


def test_only_val_evaluates_a_lora_grpo_trained(make_trainer, tmp_path):
    trainer = make_trainer(*ARGS[:4], "num_steps=2", "checkpoint_every=2")
    trainer.setup()
    trained = trainer.train()
    folder = tmp_path / "run" / "checkpoints" / "step_000002"
    evaluator = make_trainer("only_val=true", f"lora_path={folder}", run_dir=tmp_path / "eval")
    evaluator.setup()
    summary = evaluator.only_val()
    assert summary["per_model"]["tuned"]["reward/colorfulness"]["mean"] == \
        pytest.approx(trained["after"], abs=1e-6)
