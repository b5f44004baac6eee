"""eval_metrics and FVD in the training run: scored at every evaluation, logged, plotted over
training, reported base against tuned; their names checked before anything is built."""
from __future__ import annotations

import importlib.util
import json
import warnings

import pytest

from tests.test_flow_rewards import bikes
from vader.config import METRIC_SETS, expand_metrics

EVERY_STEP = ["num_steps=2", "val_every=1", "checkpoint_every=2", "num_val_seeds=2"]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metric_sets_expand_in_order_without_repeats():
    vbench = expand_metrics(["vbench"])
    assert vbench[:5] == METRIC_SETS["vbench"]
    assert ("imaging_quality" in vbench) == (importlib.util.find_spec("pyiqa") is not None)
    assert expand_metrics(["brightness", "monitoring", "t_lpips"]) == ["brightness", *METRIC_SETS["monitoring"]]


def test_an_unknown_metric_is_refused_before_anything_is_built(make_trainer):
    with pytest.raises(ValueError, match="no reward_fn option 'vbnch'.*vbench"):
        make_trainer("eval_metrics=[vbnch]")


def test_metrics_are_scored_at_every_evaluation_and_plotted(make_trainer, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(*EVERY_STEP, "eval_metrics=[temporal_flickering,brightness]", run_dir=run)
    trainer.setup()
    summary = trainer.train()["summary"]
    val = [r for r in records(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        assert 0 < r["val/temporal_flickering"] <= 1 and 0 <= r["val/brightness"] <= 1
    final = summary["per_model"]["tuned"]
    assert val[-1]["val/brightness"] == pytest.approx(final["reward/brightness"]["mean"])
    assert "reward/temporal_flickering" in summary["comparison"]
    assert (run / "eval" / "plots" / "metrics_over_steps.png").stat().st_size > 0
    assert "plots/metrics_over_steps.png" in (run / "eval" / "index.html").read_text()


def test_fvd_against_real_footage_is_reported_for_base_and_tuned(make_trainer, tmp_path, capsys):
    reference = tmp_path / "real"
    reference.mkdir()
    for name, source in (("bikes.mp4", bikes()), ("carphone.mp4", bikes().parent / "carphone_pristine.mp4")):
        (reference / name).symlink_to(source)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FVD's small-sample warning: two videos here
        trainer = make_trainer(*EVERY_STEP, f"fvd.reference={reference}", "fvd.extractor=tiny",
                               "val_batch_size=2", run_dir=run)
        trainer.setup()
        summary = trainer.train()["summary"]
    assert (run / "fvd_reference.pt").is_file()
    base, tuned = (summary["per_model"][m]["fvd"] for m in ("base", "tuned"))
    assert base > 0 and tuned > 0 and summary["set_metrics"] == ["fvd"]
    assert [r["val/fvd"] for r in records(run) if r["split"] == "val"][-1] == pytest.approx(tuned)
    assert "held-out fvd (lower is better)" in capsys.readouterr().out
    assert "fvd (lower is better)" in (run / "eval" / "index.html").read_text()


def test_a_missing_fvd_reference_fails_before_the_backbone_loads(make_trainer, tmp_path):
    with pytest.raises(FileNotFoundError, match="fvd.reference=.*nowhere.*folder of real videos"):
        make_trainer(f"fvd.reference={tmp_path / 'nowhere'}", "fvd.extractor=tiny")
