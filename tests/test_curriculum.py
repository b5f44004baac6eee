"""The length curriculum (issue 18, must-show 3; vader/loop/curriculum.py): a stage advances only
when every gate passes (or after max_steps_per_stage, with a note), the last stage is never
left, a resumed run continues in its stage, and every stage is recorded. The held-out numbers
the gates read come from a script the tests control (`gate_values` replaced), so each decision
is known in advance."""
from __future__ import annotations

import json

import pytest

from vader.loop import trainer as trainer_module
from vader.loop.curriculum import Curriculum, Gate, parse_gates


def test_gates_are_minimums_unless_they_say_otherwise():
    assert parse_gates({"seam": 0.8, "fvd": "<=300", "clip": ">= 0.2"}) == [
        Gate("seam", ">=", 0.8), Gate("fvd", "<=", 300.0), Gate("clip", ">=", 0.2)]
    assert Gate("seam", ">=", 0.8).passes(0.8) and not Gate("seam", ">=", 0.8).passes(0.79)
    assert not Gate("fvd", "<=", 300).passes(float("nan")) and not Gate("x", ">=", 0).passes(None)
    with pytest.raises(ValueError, match="curriculum.gate.seam='high'"):
        parse_gates({"seam": "high"})


@pytest.mark.parametrize("kwargs, match", [
    ({"lengths": [16, 8]}, "must grow"), ({"lengths": []}, "each stage's num_frames"),
    ({"lengths": [8, 16]}, "never end"),
    ({"lengths": [8, 16], "gate": {"seam": 0.8}, "steps_per_stage": 4, "max_steps_per_stage": 2},
     "before its first check")])
def test_settings_no_run_could_honour_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(**kwargs)


def test_advances_only_when_every_gate_passes_and_stays_in_the_last_stage():
    cur = Curriculum([8, 16, 24], {"seam": 0.8, "motion": 0.1}, steps_per_stage=5)
    assert [s for s in range(1, 11) if cur.due(s)] == [5, 10]
    assert not cur.decide(5, {"seam": 0.9, "motion": 0.05})["advanced"]  # one gate fails
    assert cur.num_frames == 8
    record = cur.decide(10, {"seam": 0.9, "motion": 0.2})
    assert record["advanced"] and record["passed"] and cur.num_frames == 16 and cur.stage_start == 10
    assert [s for s in range(10, 21) if cur.due(s)] == [15, 20]
    cur.decide(15, {"seam": 0.95, "motion": 0.3})
    assert cur.last and cur.num_frames == 24 and not any(cur.due(s) for s in range(15, 100))
    cur.finish(40, {"seam": 0.5, "motion": 0.3})
    assert [(s["start"], s["end"], s["outcome"]) for s in cur.report()] == [
        (0, 10, "gates passed"), (10, 15, "gates passed"), (15, 40, "training ended")]


def test_max_steps_per_stage_advances_without_the_gates_and_says_so():
    cur = Curriculum([8, 16], {"seam": 0.8}, steps_per_stage=2, max_steps_per_stage=4)
    assert not cur.decide(2, {"seam": 0.1})["advanced"]
    record = cur.decide(4, {"seam": 0.1})
    assert record["advanced"] and not record["passed"]
    assert "max_steps_per_stage=4" in record["note"] and "seam >= 0.8" in record["note"]
    assert cur.report()[0]["outcome"] == "max_steps_per_stage"


def test_a_checkpoint_of_other_lengths_is_refused():
    cur = Curriculum([8, 16], {"seam": 0.8})
    with pytest.raises(ValueError, match="were \\[8, 24\\]"):
        cur.load_state_dict({**cur.state_dict(), "lengths": [8, 24]})


CURRICULUM = ["curriculum.lengths=[4,6]", "+curriculum.gate.colorfulness=0.5",
              "curriculum.steps_per_stage=2", "checkpoint_every=2"]


@pytest.fixture
def scripted(monkeypatch):
    """The gates read `script[step]` as the held-out colorfulness; every check is recorded."""
    script, seen = {}, []

    def values(summary, model="tuned"):
        seen.append(summary["settings"]["num_frames"])
        return {"colorfulness": script.get(len(seen), 0.0), "motion": 0.1}
    monkeypatch.setattr(trainer_module, "gate_values", values)
    return script, seen


def test_a_run_moves_through_its_stages_on_the_gates_and_records_each(make_trainer, tmp_path, scripted):
    script, seen = scripted
    script.update({1: 0.2, 2: 0.7})  # first check (step 2) fails, second (step 4) passes
    run = tmp_path / "run"
    trainer = make_trainer(*CURRICULUM, "num_steps=6", run_dir=run)
    assert trainer.cfg.num_frames == 4
    trainer.setup()
    summary = trainer.train()["summary"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["stage"], r["num_frames"]) for r in records if r["split"] == "train"]
    assert train == [(1, 1, 4), (2, 1, 4), (3, 1, 4), (4, 1, 4), (5, 2, 6), (6, 2, 6)]
    checks = [(r["step"], r["passed"], r["advanced"]) for r in records if r["split"] == "curriculum"]
    assert checks == [(2, False, False), (4, True, True)]  # none in the last stage
    assert seen == [4, 4, 6]  # two checks at stage 1's length, the final evaluation at stage 2's
    assert summary["settings"]["num_frames"] == 6
    assert [(s["num_frames"], s["start"], s["end"], s["outcome"]) for s in summary["curriculum"]] == [
        (4, 0, 4, "gates passed"), (6, 4, 6, "training ended")]
    stage = run / "eval" / "stages" / "stage1_4f"  # the stage's last check, with its gallery
    assert "stage 1/2 (4 frames" in (stage / "index.html").read_text()
    assert "step 4" in json.loads((stage / "summary.json").read_text())["title"]
    assert "curriculum stage 2/2" in json.loads((run / "eval" / "summary.json").read_text())["title"]


def test_a_resumed_run_continues_in_its_stage(make_trainer, tmp_path, scripted):
    script, seen = scripted
    script.update({1: 0.9})  # the step-2 check passes: stage 2 from step 2
    run = tmp_path / "run"
    first = make_trainer(*CURRICULUM, "num_steps=2", run_dir=run)
    first.setup()
    first.train()  # checkpoint at step 2 written after the check: it holds stage 2
    again = make_trainer(*CURRICULUM, "num_steps=4", run_dir=run)
    assert again.cfg.num_frames == 4
    again.setup()
    assert again.step == 2 and again.curriculum.stage == 1 and again.cfg.num_frames == 6
    summary = again.train()["summary"]
    assert [(s["start"], s["end"], s["outcome"]) for s in summary["curriculum"]] == [
        (0, 2, "gates passed"), (2, 4, "training ended")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["num_frames"]) for r in records if r["split"] == "train"] == [
        (1, 4), (2, 4), (3, 6), (4, 6)]


def test_gates_on_numbers_no_evaluation_makes_fail_before_training(make_trainer):
    with pytest.raises(ValueError, match="curriculum.gate.seam: the held-out evaluation does not measure"):
        make_trainer("curriculum.lengths=[4,6]", "+curriculum.gate.seam=0.8")
    with pytest.raises(ValueError, match="curriculum.lengths: .* learns from a dataset"):
        make_trainer("algorithm=sft", "dataset=folder", "dataset.path=.", *CURRICULUM)
