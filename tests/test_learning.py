"""The learning tests' assertion (tests/learning.py) fails where it should: a minority of seeds
improving, or a mean gain under the margin, whatever the other seeds did."""
from __future__ import annotations

import pytest

from tests.learning import SETTINGS, Outcome, assert_learns


def outcomes(*gains: float) -> list[Outcome]:
    return [Outcome(seed, 1.0, 1.0 + gain) for seed, gain in enumerate(gains)]


def test_majority_and_margin_pass():
    assert_learns(outcomes(0.3, 0.2, -0.1), min_mean_gain=0.1)


def test_one_seed_improving_is_not_a_majority():
    with pytest.raises(AssertionError, match="only 1 of 3 seeds improved"):
        assert_learns(outcomes(0.9, -0.01, 0.0), min_mean_gain=0.1)


def test_mean_gain_under_the_margin_fails():
    with pytest.raises(AssertionError, match="mean gain"):
        assert_learns(outcomes(0.01, 0.02, 0.03), min_mean_gain=0.05)


def test_every_setting_names_a_reward_and_its_training():
    for name, (reward, settings) in SETTINGS.items():
        overrides = reward({k: f"/models/{k}" for k in ("clip", "bare", "processor", "hps",
                                                         "hps_arch", "xclip", "actpred", "object",
                                                         "clips", "pairs", "wan", "svd", "frames",
                                                         "image_video")})
        assert any(s.startswith("num_steps=") for s in settings), name
        rewards = [o for o in overrides if o.startswith("reward_fn=")]
        algorithm = [o.split("=")[1] for o in overrides if o.startswith("algorithm=")]
        assert len(rewards) == 1, name
        # Reward-gradient settings are named after their reward; others after the algorithm.
        assert name.startswith(f"{algorithm[0]}_") if algorithm else rewards[0] == f"reward_fn={name}"
