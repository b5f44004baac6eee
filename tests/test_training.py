"""Training end to end in-process: only LoRA changes, resume is exact, only_val reproduces the
final evaluation, and the default job improves held-out prompt alignment."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT


# Held-out gains of the README's main job (accelerate launch train.py seed=N, 2026-12-06, 2 cores,
# locked versions; docs/world.md): world_alignment 0.4804 -> 0.4963, 0.5196 (+0.016, +0.039) and
# the judge's accuracy over the four attributes 0.597 -> 0.653, 0.653 (+0.056 both: 4 of the 72
# verdicts) for seeds 0 and 1. The test runs seed 0 and asserts about half the smaller gain.
DEFAULT_JOB_MARGINS = {"world_alignment": 0.008, "judge": 0.02}


def test_only_lora_weights_change(make_trainer):
    trainer = make_trainer()
    frozen = trainer.backbone.frozen_state_dict()
    lora = trainer.backbone.lora_state_dict()
    trainer.setup()
    trainer.train()
    after = trainer.backbone.frozen_state_dict()
    assert frozen.keys() == after.keys() and len(frozen) > 100
    for k in frozen:
        assert torch.equal(frozen[k], after[k]), f"frozen weight {k} changed"
    new_lora = trainer.backbone.lora_state_dict()
    changed = [k for k in lora if not torch.equal(lora[k], new_lora[k])]
    assert len(changed) == len(lora), f"only {len(changed)}/{len(lora)} LoRA tensors changed"


def test_outputs_written(make_trainer, tmp_path):
    trainer = make_trainer()
    trainer.setup()
    result = trainer.train()
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    saved = load_file(run / "checkpoints" / "step_000002" / "pytorch_lora_weights.safetensors")
    current = trainer.backbone.lora_state_dict()
    assert saved.keys() == current.keys()
    assert all(torch.equal(saved[k], current[k]) for k in saved)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("loss", "reward", "grad_norm", "lr", "seconds"):
        assert all(isinstance(r[key], float) for r in train), key
    for model in ("base", "tuned"):  # 4 prompts x 1 seed, as gif only (video_format=gif)
        assert len(list((run / "eval" / "videos" / model).glob("*.gif"))) == 4
        assert list((run / "eval" / "videos" / model).glob("*.mp4")) == []
    for plot in ("reward_over_steps.png", "base_vs_tuned.png"):
        assert (run / "eval" / "plots" / plot).stat().st_size > 0
    assert (run / "eval" / "index.html").is_file()
    summary = json.loads((run / "eval" / "summary.json").read_text())
    tuned = summary["per_model"]["tuned"]["reward/colorfulness"]["mean"]
    assert result["step"] == 2 and result["after"] == pytest.approx(tuned)
    assert [r for r in lines if r["split"] == "val"] == [
        {"split": "val", "step": 2, "val_reward": pytest.approx(tuned)}]


class Interrupt(Exception):
    pass


def check_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch, *args: str) -> None:
    """Run `args` (num_steps=4, checkpoint_every=2) straight, and again interrupted midway
    through step 3 then resumed from step 2's checkpoint: the same LoRA (any algorithm)."""
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

    resumed = make_trainer(*args, run_dir=tmp_path / "resumed")  # fresh process state
    resumed.setup()
    assert resumed.step == 2
    resumed.train()
    got = resumed.backbone.lora_state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(got[k], interrupted.backbone.lora_state_dict()[k]) for k in got)


@pytest.mark.parametrize("mode", ["last", "rand"])
def test_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch, mode):
    """Interrupt after N steps, resume to 2N: the same LoRA as one uninterrupted 2N-step run."""
    check_resume_matches_uninterrupted(
        make_trainer, tmp_path, monkeypatch, "num_steps=4", "checkpoint_every=2",
        f"backprop_mode={mode}", "gradient_accumulation_steps=2", "train_batch_size=2")


def read_metrics(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_only_val_reproduces_final_evaluation(make_trainer, tmp_path):
    trainer = make_trainer()
    trainer.setup()
    trainer.train()
    final = read_metrics(tmp_path / "run" / "eval")
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    evaluator = make_trainer("only_val=true", f"lora_path={ckpt}", run_dir=tmp_path / "eval")
    evaluator.setup()
    evaluator.only_val()
    again = read_metrics(tmp_path / "eval" / "only_val" / "step_000002")
    assert [(r["prompt"], r["seed"], r["model"]) for r in again] == \
        [(r["prompt"], r["seed"], r["model"]) for r in final]
    for a, b in zip(again, final):
        assert float(a["reward/colorfulness"]) == pytest.approx(float(b["reward/colorfulness"]), abs=1e-6)
    # The base model alone: its rows equal the base rows of the paired evaluation, and the
    # tuned rows differ from them, so the LoRA was really loaded.
    base = make_trainer("only_val=true", run_dir=tmp_path / "base")
    base.setup()
    summary = base.only_val()
    assert summary["models"] == ["base"] and summary["comparison"] == {}
    alone = read_metrics(tmp_path / "base" / "only_val" / "base")
    assert [r["reward/colorfulness"] for r in alone] == \
        [r["reward/colorfulness"] for r in final if r["model"] == "base"]
    assert all(a["reward/colorfulness"] != b["reward/colorfulness"]
               for a, b in zip(final[::2], final[1::2]))


@pytest.mark.slow
def test_default_job_improves_held_out_alignment(tmp_path):
    """The README's main job, unchanged except for where it writes: the pretrained world model
    aligned with the differentiable world reward (docs/world.md)."""
    from benchmarks.learning_margins import attribute_accuracy
    from vader.world.grammar import ATTRIBUTES
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "train.py", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ATTRIBUTES:  # the judge's accuracy per attribute, printed
        assert f"held-out world_judge/{part}: base" in proc.stdout, proc.stdout[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    soft = {m: summary["per_model"][m]["reward/world_alignment"]["mean"] for m in ("base", "tuned")}
    judged = {m: attribute_accuracy(summary, m) for m in ("base", "tuned")}
    # Margins, not signs (DEFAULT_JOB_MARGINS).
    assert soft["tuned"] > soft["base"] + DEFAULT_JOB_MARGINS["world_alignment"], soft
    assert judged["tuned"] > judged["base"] + DEFAULT_JOB_MARGINS["judge"], judged
    assert (tmp_path / "checkpoints" / "step_000040" / "pytorch_lora_weights.safetensors").is_file()
    assert len(list((tmp_path / "eval" / "videos" / "tuned").glob("*.mp4"))) == 18  # video_format
    assert list((tmp_path / "eval" / "videos" / "tuned").glob("*.gif")) == []
    assert (tmp_path / "eval" / "index.html").is_file()
