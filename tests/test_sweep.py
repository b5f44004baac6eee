"""`python -m vader.sweep`: one table for all runs of a sweep, on synthetic run folders laid out
as `python train.py -m seed=0,1 reward_fn=brightness,colorfulness` writes them."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vader.sweep import find_runs, main, parse_overrides, split_overrides, summarise_run

SEEDS = (0, 1)
REWARD_FNS = ("brightness", "colorfulness")
# The reward_fn=colorfulness runs also evaluate contrast, so the table has columns that the
# brightness runs lack.
EVAL_REWARDS = {"brightness": ["brightness"], "colorfulness": ["colorfulness", "contrast"]}


def expected(seed: int, reward_fn: str, reward: str) -> dict[str, float]:
    """Distinct numbers per run and reward; not round, so a rounded copy would not match."""
    x = 0.1 * (seed + 1) + 0.01 * REWARD_FNS.index(reward_fn) + 0.001 * len(reward) + 1e-9
    return {"base": x, "tuned": x + 0.123456789, "delta": 0.123456789 + seed * 1e-7,
            "win_rate": 0.625 + seed / 8, "ci_low": 0.3 + seed / 100, "ci_high": 0.9 + seed / 100}


def train_reward(seed: int, step: int) -> float:
    return 0.01 * step + seed / 3


def summary(seed: int, reward_fn: str) -> dict:
    rewards = EVAL_REWARDS[reward_fn]
    per_model = {"base": {}, "tuned": {}}
    comparison = {}
    for reward in [*rewards, "motion"]:
        key = reward if reward == "motion" else f"reward/{reward}"
        e = expected(seed, reward_fn, reward)
        per_model["base"][key] = {"mean": e["base"], "std": 0.01}
        per_model["tuned"][key] = {"mean": e["tuned"], "std": 0.02}
        comparison[key] = {"win_rate": e["win_rate"], "ci_low": e["ci_low"],
                           "ci_high": e["ci_high"], "wins": 5, "ties": 0, "losses": 3,
                           "mean_delta": e["delta"], "delta_ci_low": 0.0, "delta_ci_high": 0.2,
                           "verdict": "tuned"}
    per_model["base"]["diversity"] = 0.5 + seed
    per_model["tuned"]["diversity"] = None
    return {"title": "t", "checkpoint": None, "models": ["base", "tuned"], "rewards": rewards,
            "train_reward": reward_fn, "prompts": ["a cat"], "seeds": [0, 1],
            "per_model": per_model, "comparison": comparison, "settings": {}}


def write_metrics(run: Path, seed: int, steps: int = 10) -> None:
    lines = [{"split": "val", "step": 0, "val_reward": 0.2 + seed}]
    for step in range(1, steps + 1):
        lines.append({"split": "train", "step": step, "loss": -train_reward(seed, step),
                      "reward": train_reward(seed, step), "grad_norm": 1.0, "lr": 0.005,
                      "seconds": 2.0})
    lines.append({"split": "val", "step": steps, "val_reward": 0.4 + seed + 1e-9})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def make_sweep(root: Path) -> Path:
    """2x2 sweep; every run also got the constant override num_steps=10 (typed first)."""
    for seed in SEEDS:
        for reward_fn in REWARD_FNS:
            run = root / f"reward_fn={reward_fn},seed={seed}"  # override_dirname sorts keys
            (run / "eval").mkdir(parents=True)
            (run / "overrides.yaml").write_text(
                f"- num_steps=10\n- seed={seed}\n- reward_fn={reward_fn}\n")
            write_metrics(run, seed)
            (run / "eval" / "summary.json").write_text(json.dumps(summary(seed, reward_fn)))
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown_cells(md: str) -> list[list[str]]:
    """Parse a Markdown table, checking its shape: every line a row of the same width."""
    lines = md.strip("\n").split("\n")
    rows = []
    for line in lines:
        assert line.startswith("| ") and line.endswith(" |"), line
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])])
    assert len({len(r) for r in rows}) == 1, [len(r) for r in rows]
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]), rows[1]
    return [rows[0], *rows[2:]]


def test_every_run_is_a_row_with_its_exact_numbers(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "multirun")
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["run"] for r in rows] == sorted(p.name for p in sweep.iterdir() if p.is_dir())
    for row in rows:
        seed, reward_fn = int(row["seed"]), row["reward_fn"]
        assert row["run"] == f"reward_fn={reward_fn},seed={seed}"
        assert row["num_steps"] == "10"
        assert row["status"] == "complete"
        assert int(row["steps"]) == 10
        assert float(row["final_val_reward"]) == 0.4 + seed + 1e-9
        last5 = [train_reward(seed, step) for step in range(6, 11)]
        assert float(row["final_train_reward"]) == pytest.approx(sum(last5) / 5, rel=1e-15)
        for reward in [*EVAL_REWARDS[reward_fn], "motion"]:
            e = expected(seed, reward_fn, reward)
            assert float(row[f"base/{reward}"]) == e["base"]
            assert float(row[f"tuned/{reward}"]) == e["tuned"]
            assert float(row[f"delta/{reward}"]) == e["delta"]
            assert float(row[f"win_rate/{reward}"]) == e["win_rate"]
            assert float(row[f"win_ci_low/{reward}"]) == e["ci_low"]
            assert float(row[f"win_ci_high/{reward}"]) == e["ci_high"]
        assert float(row["base/diversity"]) == 0.5 + seed
        assert row["tuned/diversity"] == ""  # None in the summary: blank, not "None"
    # stdout is the Markdown table, the same as the file.
    assert capsys.readouterr().out == (sweep / "sweep_summary.md").read_text()


def test_columns_overrides_first_and_union_of_rewards(tmp_path):
    sweep = make_sweep(tmp_path / "multirun")
    assert main([str(sweep)]) == 0
    with open(sweep / "sweep_summary.csv", newline="") as f:
        header = next(csv.reader(f))
    # Varying keys first in the order typed, then the constant one; then training columns.
    assert header[:7] == ["run", "seed", "reward_fn", "num_steps", "steps",
                          "final_train_reward", "final_val_reward"]
    assert header[-1] == "status" and "note" not in header
    # Rewards (in first-met order), then motion, then diversity; each metric's columns together.
    metrics = [c.split("/", 1)[1] for c in header if "/" in c]
    assert list(dict.fromkeys(metrics)) == ["brightness", "colorfulness", "contrast", "motion",
                                            "diversity"]
    assert header[7:13] == ["base/brightness", "tuned/brightness", "delta/brightness",
                            "win_rate/brightness", "win_ci_low/brightness",
                            "win_ci_high/brightness"]
    assert "delta/diversity" not in header  # the summary has no comparison for it
    for row in read_csv(sweep / "sweep_summary.csv"):
        has = EVAL_REWARDS[row["reward_fn"]]
        for reward in ("brightness", "colorfulness", "contrast"):
            assert (row[f"tuned/{reward}"] != "") == (reward in has), (row["run"], reward)


def test_markdown_table_parses_and_rounds(tmp_path):
    sweep = make_sweep(tmp_path / "multirun")
    assert main([str(sweep), "--last", "1"]) == 0
    header, *body = markdown_cells((sweep / "sweep_summary.md").read_text())
    assert len(body) == 4
    assert "win_ci_low/motion" not in header  # folded into the win_rate cell
    row = dict(zip(header, body[0]))  # reward_fn=brightness,seed=0
    assert row["run"] == "reward_fn=brightness,seed=0"
    assert row["final_train_reward"] == f"{train_reward(0, 10):.4g}"  # --last 1
    e = expected(0, "brightness", "brightness")
    assert row["tuned/brightness"] == f"{e['tuned']:.4g}" == "0.2335"
    assert row["win_rate/brightness"] == "0.625 [0.3, 0.9]"
    assert row["tuned/colorfulness"] == "" and row["tuned/diversity"] == ""


def test_nested_layout_and_runs_are_not_searched_inside(tmp_path):
    sweep = tmp_path / "sweeps"
    make_sweep(sweep / "a")
    lone = sweep / "b" / "seed=7"
    lone.mkdir(parents=True)
    (lone / "overrides.yaml").write_text("[seed=7]\n")
    # An evaluation inside a run belongs to that run, not a run of its own.
    inner = sweep / "a" / "reward_fn=brightness,seed=0" / "only_val" / "step_10" / "eval"
    inner.mkdir(parents=True)
    (inner / "summary.json").write_text("{}")
    runs = find_runs(sweep)
    assert [p.relative_to(sweep).as_posix() for p in runs] == [
        "a/reward_fn=brightness,seed=0", "a/reward_fn=brightness,seed=1",
        "a/reward_fn=colorfulness,seed=0", "a/reward_fn=colorfulness,seed=1", "b/seed=7"]
    row = summarise_run(lone, sweep)
    assert row["run"] == "b/seed=7" and row["status"] == "empty"
    assert row["overrides"] == {"seed": "7"}


def test_overrides_from_the_folder_name_when_overrides_yaml_is_missing(tmp_path):
    run = tmp_path / "multirun" / "eval_rewards=[a,b],prompt='x, y',seed=3"
    run.mkdir(parents=True)
    write_metrics(run, seed=3, steps=4)
    row = summarise_run(run, tmp_path / "multirun", last=5)
    assert row["overrides"] == {"eval_rewards": "[a,b]", "prompt": "'x, y'", "seed": "3"}
    assert row["status"] == "no evaluation"
    assert "folder name" in row["note"]
    assert row["training"]["steps"] == 4
    assert row["training"]["final_train_reward"] == pytest.approx(
        sum(train_reward(3, s) for s in range(1, 5)) / 4)  # fewer lines than --last: all of them
    assert main([str(tmp_path / "multirun")]) == 0
    (csv_row,) = read_csv(tmp_path / "multirun" / "sweep_summary.csv")
    assert csv_row["eval_rewards"] == "[a,b]" and "folder name" in csv_row["note"]


@pytest.mark.parametrize("name, items", [
    ("default", ["default"]),
    ("a=1,b=[x,y],c={k:1,j:2}", ["a=1", "b=[x,y]", "c={k:1,j:2}"]),
    (r"name=a\,b,seed=1", [r"name=a\,b", "seed=1"]),
    ('p="x,y",+q=2', ['p="x,y"', "+q=2"]),
])
def test_split_overrides(name, items):
    assert split_overrides(name) == items


def test_parse_overrides_strips_plus_and_keeps_values():
    assert parse_overrides(["+lr=1e-3", "++x=a=b"]) == {"lr": "1e-3", "x": "a=b"}
    assert parse_overrides(["default"]) == {}  # the folder of a run without overrides
    assert parse_overrides(["p=a", "b"]) == {"p": "a,b"}  # an unescaped comma in a value


def test_corrupt_files_give_error_rows_and_exit_1(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "multirun")
    broken = sweep / "reward_fn=brightness,seed=0"
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "step": 11, "rew')  # killed mid-line
    bad_summary = sweep / "reward_fn=colorfulness,seed=1"
    (bad_summary / "eval" / "summary.json").write_text('{"per_model": ')
    bad_overrides = sweep / "reward_fn=colorfulness,seed=0"
    (bad_overrides / "overrides.yaml").write_text("seed: [unclosed\n")
    assert main([str(sweep)]) == 1
    err = capsys.readouterr().err
    rows = {r["run"]: r for r in read_csv(sweep / "sweep_summary.csv")}
    assert len(rows) == 4
    assert rows[broken.name]["status"].startswith("error: metrics.jsonl: line 13")
    assert rows[broken.name]["steps"] == "10"  # the good lines still count
    assert rows[broken.name]["base/brightness"] != ""
    assert rows[bad_summary.name]["status"].startswith("error: eval/summary.json: not JSON")
    assert rows[bad_summary.name]["base/colorfulness"] == ""
    assert rows[bad_summary.name]["steps"] == "10"
    assert rows[bad_overrides.name]["status"].startswith("error: overrides.yaml:")
    assert rows[bad_overrides.name]["seed"] == "0"  # fell back to the folder name
    assert rows["reward_fn=brightness,seed=1"]["status"] == "complete"
    assert broken.name in err and "metrics.jsonl" in err
    markdown_cells((sweep / "sweep_summary.md").read_text())


def test_summary_with_wrong_types_is_an_error_row(tmp_path):
    sweep = make_sweep(tmp_path / "multirun")
    run = sweep / "reward_fn=brightness,seed=1"
    bad = summary(1, "brightness")
    bad["per_model"]["tuned"]["reward/brightness"] = "high"
    (run / "eval" / "summary.json").write_text(json.dumps(bad))
    row = summarise_run(run, sweep)
    assert row["status"] == ("error: eval/summary.json: per_model.tuned.reward/brightness: "
                             "expected a number or {mean, std}, got 'high'")


def test_missing_folder_and_no_runs_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "python -m vader.sweep multirun" in err
    assert not (tmp_path / "empty" / "sweep_summary.csv").exists()


def test_out_prefix_writes_both_files_and_no_temp_files(tmp_path):
    sweep = make_sweep(tmp_path / "multirun")
    assert main([str(sweep), "--out", str(tmp_path / "tables" / "run1.csv")]) == 0
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["run1.csv", "run1.md"]
    assert not (sweep / "sweep_summary.csv").exists()


def test_command_line(tmp_path):
    help_ = subprocess.run([sys.executable, "-m", "vader.sweep", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0, help_.stderr
    assert "python -m vader.sweep multirun" in help_.stdout and "--last" in help_.stdout
    sweep = make_sweep(tmp_path / "multirun")
    done = subprocess.run([sys.executable, "-m", "vader.sweep", str(sweep)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (sweep / "sweep_summary.md").read_text()
    assert "4 runs" in done.stderr
