"""Composite rewards: the value is the weighted sum of the parts, each part keeps its own frames
and loss shaping, and every part is logged. Also the frame aggregations the learned rewards use."""
from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from rewards.colorfulness import Colorfulness
from rewards.common import aggregate
from rewards.composite import Composite
from rewards.contrast import Contrast
from vader.algorithms.losses import reward_loss

PROMPTS = ["a", "b"]


def video(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 6, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_value_is_the_weighted_sum_of_the_parts_on_their_own_frames():
    composite = Composite({"color": {"reward": Colorfulness(frames="all"), "weight": 2.0},
                           "contrast": {"reward": Contrast(frames=3), "weight": -0.5}})
    assert composite.frames == "all"  # the parts disagree, so everything is decoded
    frames = video()
    value, info = composite(frames, PROMPTS)
    color = Colorfulness()(frames, PROMPTS)[0]
    contrast = Contrast()(frames[:, ::3], PROMPTS)[0]  # every 3rd frame, as that part asked
    torch.testing.assert_close(value, 2.0 * color - 0.5 * contrast)
    assert info["color"] == pytest.approx(color.mean().item())
    assert info["contrast"] == pytest.approx(contrast.mean().item())


def test_parts_that_agree_on_frames_pass_them_on():
    composite = Composite({"a": {"reward": Colorfulness(frames="random")},
                           "b": {"reward": Contrast(frames="random")}})
    assert composite.frames == "random"


def test_random_parts_pick_from_the_callers_generators():
    # One part wants a random frame, the other all of them: the composite gets all frames and
    # the random part picks, per video, from the generator the caller hands it.
    composite = Composite({"pick": {"reward": Colorfulness(frames="random")},
                           "all": {"reward": Contrast(frames="all"), "weight": 0.0}})
    frames = video(2)
    picked = [random.Random(7).randrange(6), random.Random(8).randrange(6)]
    expected = Colorfulness()(torch.stack([frames[0, picked[0]], frames[1, picked[1]]])[:, None],
                              PROMPTS)[0]
    for _ in range(3):  # no state of its own: the same generators give the same frames
        value, _ = composite(frames, PROMPTS, rngs=[random.Random(7), random.Random(8)])
        torch.testing.assert_close(value, expected)


def test_training_step_frames_come_from_seed_and_step(make_trainer):
    # Resume is exact only if every random choice of a step is a function of (seed, step):
    # the same micro-step generator must give the same loss however often it is replayed.
    trainer = make_trainer("reward_fn=composite", "reward_fn.parts.colorfulness.reward.frames=random")
    trainer.setup()
    prompts, seeds = trainer.algorithm.batch(0, 0)
    with torch.no_grad():
        losses = {trainer.algorithm.forward_loss(prompts, seeds, random.Random("0-0-0"))[0].item()
                  for _ in range(6)}
    assert len(losses) == 1


def test_base_and_tuned_are_scored_on_the_same_frames(make_trainer, tmp_path):
    # A fresh LoRA is zero, so base and tuned videos are identical: their scores differ only if
    # the composite's random part looked at different frames.
    trainer = make_trainer("reward_fn=composite", "reward_fn.parts.colorfulness.reward.frames=random",
                           "prompt_fn.num_val=2", "num_val_seeds=3")
    trainer.setup()
    trainer.evaluate(tmp_path / "eval", gallery=False)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    scores = {(r["prompt_index"], r["seed"], r["model"]): r["reward/composite"] for r in rows}
    pairs = [(scores[(p, s, "base")], scores[(p, s, "tuned")]) for p, s, m in scores if m == "base"]
    assert len(pairs) == 6 and all(base == tuned for base, tuned in pairs)


def test_loss_shapes_each_part_and_gradients_reach_the_frames():
    composite = Composite({"color": {"reward": Colorfulness(), "weight": 2.0, "target": 10.0,
                                     "grad_scale": 0.1},
                           "contrast": {"reward": Contrast(), "weight": 1.0}})
    frames = video(1).requires_grad_()
    value, info = composite(frames, PROMPTS)
    loss = composite.loss(value, info)
    expected = (2.0 * reward_loss(info["parts"]["color"], 10.0, 0.1)
                + reward_loss(info["parts"]["contrast"]))
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


@pytest.mark.parametrize("parts, match", [
    ({}, "empty"),
    ({"x": {"weight": 1.0}}, "needs `reward`"),
    ({"x": {"reward": Colorfulness(), "wieght": 1.0}}, "wieght"),
])
def test_bad_parts(parts, match):
    with pytest.raises(ValueError, match=match):
        Composite(parts)


def test_top_level_loss_shaping_is_refused_for_a_composite(make_trainer):
    with pytest.raises(ValueError, match="reward_fn.parts"):
        make_trainer("reward_fn=composite", "loss.target=1.0")


def test_every_part_is_logged_in_training(make_trainer, tmp_path):
    trainer = make_trainer("reward_fn=composite", "num_steps=1", run_dir=tmp_path / "run")
    trainer.setup()
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"][0]
    assert {"reward_info/colorfulness", "reward_info/contrast"} <= set(train)
    assert train["reward"] == pytest.approx(train["reward_info/colorfulness"]
                                            + 0.5 * train["reward_info/contrast"], rel=1e-5)


def test_aggregations():
    x = torch.tensor([[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]])
    assert aggregate(x, "mean").tolist() == [3.0, 3.0]
    assert aggregate(x, "min").tolist() == [1.0, 3.0]
    assert aggregate(x, "mean+min").tolist() == [2.0, 3.0]
    soft = aggregate(x, "softmin", temperature=0.5)
    assert 1.0 < soft[0] < 3.0 and soft[1].item() == pytest.approx(3.0)
    assert aggregate(x, "softmin", temperature=1e-3)[0].item() == pytest.approx(1.0, abs=1e-2)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, "max")
