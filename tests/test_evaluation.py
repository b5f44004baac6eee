"""The evaluation harness on the tiny backbone: paired base-vs-tuned generation, determinism,
extra evaluation rewards, the gallery of a real evaluation in Chromium, the same numbers from two
processes as from one, and the summary of a 2 x 2 sweep."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from tests.conftest import ROOT, TINY
from tests.conftest import severe
from tests.test_gallery import local_files, parse
from vader.evaluation import evaluate as evaluation

PAIRED = ["num_val_seeds=2", "eval_rewards=[brightness,contrast]"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def spy_on_generation(monkeypatch):
    """Record, for every generated batch: base or tuned (from the LoRA layers' state), the
    initial noise, and the decoded frames."""
    calls = []
    real_noise, real_generate = evaluation.video_noise, evaluation._generate

    def noise(*args, **kwargs):
        calls[-1]["noise"] = real_noise(*args, **kwargs)
        return calls[-1]["noise"]

    def generate(backbone, model, prompts, seeds, spec, accelerator):
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        calls.append({"disabled": all(m.disable_adapters for m in layers),
                      "key": (tuple(prompts), tuple(seeds))})
        calls[-1]["frames"] = real_generate(backbone, model, prompts, seeds, spec, accelerator)
        return calls[-1]["frames"]

    monkeypatch.setattr(evaluation, "video_noise", noise)
    monkeypatch.setattr(evaluation, "_generate", generate)
    return calls


def test_base_and_tuned_share_noise_and_zero_lora_ties(make_trainer, tmp_path, monkeypatch):
    trainer = make_trainer(*PAIRED)
    trainer.setup()
    calls = spy_on_generation(monkeypatch)
    summary = trainer.evaluate(tmp_path / "zero")
    base, tuned = calls[0::2], calls[1::2]
    assert [c["disabled"] for c in calls] == [True, False] * len(base)
    for b, t in zip(base, tuned):
        assert b["key"] == t["key"] and torch.equal(b["noise"], t["noise"])
        assert torch.equal(b["frames"], t["frames"])  # LoRA's up-projection starts at zero
    for key in ("reward/colorfulness", "reward/brightness", "reward/contrast", "motion"):
        result = summary["comparison"][key]
        assert result["verdict"] == "tie" and result["win_rate"] == 0.5
        assert result["ties"] == result["pairs"] == 8
    rows = read_csv(tmp_path / "zero" / "metrics.csv")
    assert [r["reward/colorfulness"] for r in rows[0::2]] == [r["reward/colorfulness"] for r in rows[1::2]]

    # A non-zero LoRA: the same noise and the same base videos, different tuned ones.
    with torch.no_grad():
        for name, p in trainer.backbone.trainable_module().named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    calls.clear()
    trainer.evaluate(tmp_path / "trained")
    for before, after in zip(base, calls[0::2]):
        assert torch.equal(before["noise"], after["noise"]) and torch.equal(before["frames"], after["frames"])
    for b, t in zip(calls[0::2], calls[1::2]):
        assert torch.equal(b["noise"], t["noise"]) and not torch.equal(b["frames"], t["frames"])


@pytest.mark.parametrize("video_format", ["mp4", "gif"])
def test_videos_are_written_once_in_video_format(make_trainer, tmp_path, video_format):
    trainer = make_trainer(f"video_format={video_format}", "prompt_fn.num_val=1")
    trainer.setup()
    trainer.evaluate(tmp_path / "eval")
    written = sorted(p.relative_to(tmp_path / "eval").as_posix()
                     for p in (tmp_path / "eval" / "videos").rglob("*") if p.is_file())
    assert len(written) == 2 and all(n.endswith(f".{video_format}") for n in written), written
    rows = read_csv(tmp_path / "eval" / "metrics.csv")
    assert written == sorted(r["video"] for r in rows)  # base, tuned
    parser, _ = parse(tmp_path / "eval")
    assert set(written) <= set(parser.links)  # the gallery shows the files that exist


@pytest.fixture
def checkpoint(make_trainer, tmp_path):
    trainer = make_trainer(run_dir=tmp_path / "train")
    trainer.setup()
    trainer.train()
    return tmp_path / "train" / "checkpoints" / "step_000002"


def test_evaluating_a_checkpoint_twice_gives_identical_numbers(make_trainer, checkpoint, tmp_path):
    outputs = []
    for attempt in ("first", "second"):
        evaluator = make_trainer("only_val=true", f"lora_path={checkpoint}", *PAIRED,
                                 run_dir=tmp_path / attempt)
        evaluator.setup()
        evaluator.only_val()
        folder = tmp_path / attempt / "only_val" / "step_000002"
        outputs.append(folder)
    assert (outputs[0] / "metrics.csv").read_bytes() == (outputs[1] / "metrics.csv").read_bytes()
    first, second = (json.loads((f / "summary.json").read_text()) for f in outputs)
    assert first.pop("title") != second.pop("title")  # named after the run directory
    assert first == second
    rows = read_csv(outputs[0] / "metrics.csv")
    assert len(rows) == 4 * 2 * 2  # prompts x seeds x {base, tuned}
    assert set(rows[0]) >= {"reward/colorfulness", "reward/brightness", "reward/contrast", "motion"}
    summary = json.loads((outputs[0] / "summary.json").read_text())
    assert summary["rewards"] == ["colorfulness", "brightness", "contrast"]
    assert summary["comparison"]["reward/colorfulness"]["verdict"] != "tie"
    assert summary["per_model"]["tuned"]["diversity"] > 0


def test_real_gallery_links_every_video_and_loads_in_chromium(make_trainer, checkpoint, tmp_path,
                                                               browser):
    evaluator = make_trainer("only_val=true", f"lora_path={checkpoint}", *PAIRED,
                             run_dir=tmp_path / "eval")
    evaluator.setup()
    summary = evaluator.only_val()
    folder = tmp_path / "eval" / "only_val" / "step_000002"
    parser, text = parse(folder)
    files = local_files(folder, parser.links)
    rows = read_csv(folder / "metrics.csv")
    assert files >= {(folder / r["video"]).resolve() for r in rows}
    assert parser.prompts == summary["prompts"]
    for seed in summary["seeds"]:
        assert text.count(f"seed {seed}</td>") == len(summary["prompts"])
    browser.get((folder / "index.html").as_uri())
    assert severe(browser) == []
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length;")
    assert broken == 0
    assert browser.save_screenshot(str(tmp_path / "gallery.png"))


def test_eval_rewards_are_checked_before_building(make_trainer):
    with pytest.raises(ValueError, match="no reward_fn option 'brightnes'"):
        make_trainer("eval_rewards=[brightnes]")
    with pytest.raises(ValueError, match="eval_reward_args names \\['contrast'\\]"):
        make_trainer("eval_rewards=[brightness]", "+eval_reward_args.contrast.frames=all")
    with pytest.raises(ValueError, match="unknown key 'eval_reward_args.brightness.gain'"):
        make_trainer("eval_rewards=[brightness]", "+eval_reward_args.brightness.gain=2")
    trainer = make_trainer("eval_rewards=[brightness,colorfulness]",
                           "+eval_reward_args.brightness.frames=2")
    assert list(trainer.rewards) == ["colorfulness", "brightness"]  # training reward once, first
    assert trainer.rewards["brightness"].frames == 2


def run(cmd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_two_process_evaluation_matches_one(checkpoint, tmp_path):
    args = [*TINY, *PAIRED, "only_val=true", f"lora_path={checkpoint}", "val_batch_size=3"]
    two, one = tmp_path / "two", tmp_path / "one"
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "train.py", *args, f"hydra.run.dir={two}"])
    run([sys.executable, "train.py", *args, f"hydra.run.dir={one}"])
    folders = [d / "only_val" / "step_000002" for d in (two, one)]
    rows = [read_csv(f / "metrics.csv") for f in folders]
    assert len(rows[0]) == len(rows[1]) == 16
    for a, b in zip(*rows):
        assert (a["prompt"], a["seed"], a["model"], a["video"]) == (b["prompt"], b["seed"], b["model"], b["video"])
        for key in ("reward/colorfulness", "reward/brightness", "reward/contrast", "motion"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    for key, result in summaries[1]["comparison"].items():
        other = summaries[0]["comparison"][key]
        assert (other["wins"], other["ties"], other["losses"]) == \
            (result["wins"], result["ties"], result["losses"]), key
        assert other["win_rate"] == result["win_rate"]
        assert other["mean_delta"] == pytest.approx(result["mean_delta"], rel=1e-4, abs=1e-7)
    for model in ("base", "tuned"):
        assert summaries[0]["per_model"][model]["diversity"] == pytest.approx(
            summaries[1]["per_model"][model]["diversity"], rel=1e-4)
    # Only the main process wrote: every video exactly once, no stray temporary files.
    assert sorted(p.name for p in (folders[0] / "videos" / "tuned").iterdir()) == \
        sorted(p.name for p in (folders[1] / "videos" / "tuned").iterdir())
    assert not list(folders[0].rglob(".*tmp*"))


@pytest.mark.slow
def test_sweep_summary_lists_every_run_of_a_2x2_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # one directory per job; the sweep's reward_fn, not TINY's
    tiny = [a for a in TINY if not a.startswith(("run_name=", "reward_fn="))]
    run([sys.executable, "train.py", "-m", "seed=0,1", "reward_fn=brightness,colorfulness",
         *tiny, f"hydra.sweep.dir={sweep}"])
    proc = run([sys.executable, "-m", "vader.sweep", str(sweep)])
    rows = read_csv(sweep / "sweep_summary.csv")
    assert len(rows) == 4
    assert {(r["seed"], r["reward_fn"]) for r in rows} == \
        {(s, r) for s in ("0", "1") for r in ("brightness", "colorfulness")}
    for row in rows:
        assert row["status"] == "complete"
        summary = json.loads((sweep / row["run"] / "eval" / "summary.json").read_text())
        name = row["reward_fn"]
        assert float(row[f"tuned/{name}"]) == summary["per_model"]["tuned"][f"reward/{name}"]["mean"]
        assert float(row[f"win_rate/{name}"]) == summary["comparison"][f"reward/{name}"]["win_rate"]
        train = [json.loads(line) for line in (sweep / row["run"] / "metrics.jsonl").read_text().splitlines()]
        rewards = [r["reward"] for r in train if r["split"] == "train"]
        assert float(row["final_train_reward"]) == pytest.approx(sum(rewards) / len(rewards))
        assert int(row["steps"]) == 2
    markdown = (sweep / "sweep_summary.md").read_text()
    assert markdown in proc.stdout and markdown.count("\n|") >= 5


def test_clip_embedding_for_diversity(make_trainer, tmp_path):
    """eval_embedding=<CLIP folder>: mean normalised frame embedding; identical videos, zero
    diversity; the run's summary uses it."""
    from tests import tiny_clip
    from vader.build import make_embedder
    from vader.evaluation.stats import diversity

    folder = tiny_clip.write_clip(tmp_path / "clip")
    embed = make_embedder(str(folder))
    video = torch.rand(1, 4, 3, 16, 16)
    vectors = embed(torch.cat([video, video, torch.rand(1, 4, 3, 16, 16)]))
    assert vectors.shape[0] == 3 and torch.allclose(vectors[0].norm(), torch.tensor(1.0), atol=0.2)
    assert diversity(vectors[:2]) < 1e-12 and diversity(vectors) > 1e-6  # batch rounding only
    trainer = make_trainer("num_val_seeds=2", f"eval_embedding={folder}")
    trainer.setup()
    summary = trainer.evaluate(None)
    assert summary["per_model"]["base"]["diversity"] > 0
    with pytest.raises(FileNotFoundError, match="eval_embedding"):
        make_embedder(str(tmp_path / "missing"))
