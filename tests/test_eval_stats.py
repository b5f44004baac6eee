"""The evaluation's numbers on videos made here: motion, diversity and the paired comparison."""
from __future__ import annotations

import math

import pytest
import torch

from vader.evaluation.stats import (diversity, finite_or_none, hacking_flags, motion, paired_comparison,
                              pixel_embedding, summarise, wilson_interval)


def moving_square(shift_per_frame: int, frames: int = 8, size: int = 32) -> torch.Tensor:
    """A white 8x8 square on black that moves `shift_per_frame` pixels right each frame."""
    video = torch.zeros(frames, 3, size, size)
    for t in range(frames):
        x = (4 + t * shift_per_frame) % (size - 8)
        video[t, :, 12:20, x:x + 8] = 1
    return video


def test_motion_zero_for_static_and_grows_with_motion():
    still = moving_square(0)
    slow, fast = moving_square(1), moving_square(3)
    values = motion(torch.stack([still, slow, fast]))
    assert values[0].item() == 0
    assert 0 < values[1] < values[2]
    # A video of one frame repeated is still, whatever the frame holds.
    noise = torch.rand(1, 1, 3, 16, 16).expand(1, 6, 3, 16, 16)
    assert motion(noise).item() == 0
    # Known value: a whole frame flipping from 0 to 1 and back changes every pixel by 1.
    flicker = torch.stack([torch.full((3, 4, 4), float(t % 2)) for t in range(5)])[None]
    assert motion(flicker).item() == 1


def test_motion_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        motion(torch.rand(4, 3, 16, 16))


def test_diversity_zero_for_identical_and_positive_otherwise():
    video = torch.rand(8, 3, 32, 32)
    same = pixel_embedding(torch.stack([video, video, video]))
    assert diversity(same) == 0
    different = pixel_embedding(torch.stack([video, torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)]))
    assert diversity(different) > 0
    # More spread between seeds, more diversity.
    near = pixel_embedding(torch.stack([video, (video + 0.01).clamp(0, 1)]))
    far = pixel_embedding(torch.stack([video, 1 - video]))
    assert 0 < diversity(near) < diversity(far)
    with pytest.raises(ValueError, match="num_val_seeds >= 2"):
        diversity(same[:1])


def test_wilson_interval_known_values():
    # 8 of 8: the interval does not collapse to [1, 1]; 5 of 10 is symmetric about 0.5.
    low, high = wilson_interval(8, 8)
    assert low == pytest.approx(0.6756, abs=1e-4) and high == 1
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high) and low == pytest.approx(0.2366, abs=1e-4)


def test_paired_comparison_verdicts():
    tie = paired_comparison([0.3, 0.5, 0.7], [0.3, 0.5, 0.7])
    assert tie["verdict"] == "tie" and tie["win_rate"] == 0.5 and tie["ties"] == 3
    assert tie["mean_delta"] == 0 and tie["delta_ci_low"] == tie["delta_ci_high"] == 0
    better = paired_comparison([0.0] * 10, [0.1 * i + 0.1 for i in range(10)])
    assert better["verdict"] == "tuned" and better["wins"] == 10 and better["ci_low"] > 0.5
    assert better["delta_ci_low"] <= better["mean_delta"] <= better["delta_ci_high"]
    worse = paired_comparison([1.0] * 10, [0.0] * 10)
    assert worse["verdict"] == "base" and worse["losses"] == 10 and worse["ci_high"] < 0.5
    mixed = paired_comparison([0, 0, 0, 0], [1, -1, 1, 0])
    assert mixed["verdict"] == "inconclusive" and mixed["win_rate"] == pytest.approx(0.625)
    assert (mixed["wins"], mixed["ties"], mixed["losses"]) == (2, 1, 1)
    # Deterministic: the bootstrap has its own fixed generator.
    torch.manual_seed(123)
    assert paired_comparison([0, 0, 0, 0], [1, -1, 1, 0]) == mixed
    nan = paired_comparison([0.0, 1.0], [float("nan"), 2.0])
    assert nan["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_comparison([1.0], [1.0, 2.0])


def test_summarise_pairs_rows_by_prompt_and_seed():
    rows, embeddings = [], {}
    for pi in range(2):
        for seed in (5, 6):
            for model, reward in (("base", 0.1 * pi), ("tuned", 0.1 * pi + 0.05)):
                rows.append({"prompt_index": pi, "seed": seed, "model": model,
                             "reward/r": reward, "motion": 0.2})
                embeddings[(model, pi, seed)] = torch.full((4,), float(seed if model == "tuned" else 0))
    out = summarise(rows[::-1], ["reward/r", "motion"], ["base", "tuned"], embeddings)
    assert out["per_model"]["base"]["reward/r"]["mean"] == pytest.approx(0.05)
    assert out["per_model"]["tuned"]["reward/r"]["mean"] == pytest.approx(0.10)
    assert out["comparison"]["reward/r"]["wins"] == 4
    assert out["comparison"]["motion"]["verdict"] == "tie"
    assert out["per_model"]["base"]["diversity"] == 0  # base embeddings equal across seeds
    assert out["per_model"]["tuned"]["diversity"] == pytest.approx(0.5)  # var of {5, 6}
    one_seed = [r for r in rows if r["seed"] == 5]
    assert summarise(one_seed, ["reward/r"], ["base"], embeddings)["per_model"]["base"]["diversity"] is None


def test_finite_or_none_makes_json_safe():
    assert finite_or_none({"a": [1.0, math.nan], "b": {"c": math.inf}, "d": "x"}) == \
        {"a": [1.0, None], "b": {"c": None}, "d": "x"}


def flagged_summary(reward=(0.2, 0.5), moved=(0.02, 0.01), diverse=(0.03, 0.029)) -> dict:
    models = ("base", "tuned")
    return {"train_reward": "t_lpips", "per_model": {
        m: {"reward/t_lpips": {"mean": reward[i], "std": 0.0}, "motion": {"mean": moved[i], "std": 0.0},
            "diversity": diverse[i]} for i, m in enumerate(models)}}


def test_hacking_is_flagged_when_the_reward_rises_while_motion_or_diversity_falls():
    flags = hacking_flags(flagged_summary())
    assert flags == ["possible reward hacking: t_lpips rose 0.2 -> 0.5 while motion fell 0.02 -> 0.01 "
                     "(-50%; flagged below -30%)"]
    assert hacking_flags(flagged_summary(diverse=(0.03, 0.01)))[1].startswith(
        "possible reward hacking: t_lpips rose 0.2 -> 0.5 while diversity fell")
    assert hacking_flags(flagged_summary(moved=(0.02, 0.015))) == []     # -25%: within the margin
    assert hacking_flags(flagged_summary(reward=(0.5, 0.2))) == []       # the reward did not rise
    assert hacking_flags(flagged_summary(diverse=(None, None), moved=(0.02, 0.02))) == []  # one seed
    base_only = flagged_summary()
    del base_only["per_model"]["tuned"]
    assert hacking_flags(base_only) == []
