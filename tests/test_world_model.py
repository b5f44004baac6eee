"""The shipped world model end to end: it loads offline, it is what its config says it is, the
default config trains it with the world reward and evaluates it with the judge, per attribute."""
from __future__ import annotations

import json

import pytest

from backbones.world import SHIPPED
from tests.conftest import compose_cfg
from vader.world.grammar import ATTRIBUTES

# The default job's own settings, shrunk: two steps and one seed per held-out prompt.
SMALL = ["backbone=world", "reward_fn=world_alignment", "prompt_fn=world",
         "eval_rewards=[world_judge]", "num_frames=8", "height=32", "width=32",
         "num_inference_steps=10", "guidance_scale=4.0", "val_batch_size=9"]


def test_the_shipped_model_says_how_it_was_made_and_how_good_it_is():
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["made"]["command"].startswith("python -m vader.world pretrain")
    held = config["heldout"]
    # All four attributes right: clearly above guessing (1/108) with room to improve. Per
    # attribute it is not yet what issue 16 asks (background 100%, motion at chance): docs/world.md.
    assert held["chance"]["accuracy/all"] < held["accuracy/all"] < 1
    assert held["accuracy/colour"] > held["chance"]["accuracy/colour"]
    assert held["accuracy/shape"] > held["chance"]["accuracy/shape"]
    assert (SHIPPED / "model.safetensors").stat().st_size < 8 * 2 ** 20


def test_training_the_world_model_reports_judge_accuracy_per_attribute(make_trainer, tmp_path):
    trainer = make_trainer(*SMALL)
    assert trainer.backbone.name == "world"
    trainer.setup()
    result = trainer.train()
    summary = result["summary"]
    for model in ("base", "tuned"):
        numbers = summary["per_model"][model]
        for attribute in ATTRIBUTES:
            value = numbers[f"reward/world_judge/{attribute}"]["mean"]
            assert 0 <= value <= 1
        # "all four right" can never beat the attribute it gets right least often
        assert numbers["reward/world_judge"]["mean"] <= min(
            numbers[f"reward/world_judge/{a}"]["mean"] for a in ATTRIBUTES) + 1e-9
    rows = (tmp_path / "run" / "eval" / "metrics.csv").read_text().splitlines()
    assert "reward/world_judge/motion" in rows[0] and len(rows) == 1 + 2 * 18
    assert (tmp_path / "run" / "eval" / "index.html").is_file()


@pytest.mark.slow
def test_the_recorded_heldout_accuracy_is_what_the_model_gets():
    from vader.world.accuracy import evaluate_model
    recorded = json.loads((SHIPPED / "config.json").read_text())["heldout"]
    measured = evaluate_model(num_seeds=recorded["seeds"], guidance_scale=recorded["guidance_scale"])
    for key in [f"accuracy/{a}" for a in (*ATTRIBUTES, "all")]:
        # The same weights and seeds; other CPUs may round sums differently, which can flip a
        # borderline video or two of the 72.
        assert measured[key] == pytest.approx(recorded[key], abs=0.05), key


def test_the_motion_probe_runs_on_the_shipped_model(capsys):
    from benchmarks.world_motion_probe import main
    from vader.world.grammar import MOTIONS
    main(["--noises", "2"])
    out = capsys.readouterr().out
    assert out.count("t=999") == 1 and out.count("t=700") == 1
    for motion in MOTIONS:
        assert out.count(f"  {motion} ") == 2, motion
    assert out.count("when only the colour word changes") == 2
