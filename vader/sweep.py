"""Summarise every run of a Hydra sweep in one table (CSV and Markdown).

    python train.py -m seed=0,1 reward_fn=brightness,colorfulness
    python -m vader.sweep multirun                       # -> multirun/sweep_summary.{csv,md}
    python -m vader.sweep multirun --out results/sweep --last 10

A run directory is any folder under the sweep folder (at any depth) holding `metrics.jsonl`,
`overrides.yaml` or `eval/summary.json`; folders inside a run are not searched. Each run becomes
one row: its overrides (from `overrides.yaml`, else parsed from the folder name), the last
training step, the mean of the last `--last` training rewards, the last held-out reward, and from
`eval/summary.json` every metric's per-model mean, the mean paired delta and the win rate with
its confidence interval. Runs with different rewards share one table: blanks where a run has no
such column. A file that cannot be read becomes `status: error: <file>: <reason>` in its run's
row and the rest go on; the exit code is 1 when any run had an error, after the table is written.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from vader.io.files import atomic_write_text

MARKERS = ("metrics.jsonl", "overrides.yaml", "eval/summary.json")
TRAINING_COLUMNS = ("steps", "final_train_reward", "final_val_reward")
# Per-metric slots that come from `comparison`; every other slot is a model name (base, tuned).
COMPARISON_SLOTS = ("delta", "win_rate", "win_ci_low", "win_ci_high")
REWARD_PREFIX = "reward/"


class RunFileError(ValueError):
    """A run's file is unreadable or malformed; the message says which file and why."""


# --------------------------------------------------------------------------- finding runs

def is_run_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in MARKERS)


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run directories under `sweep_dir`, sorted by their path relative to it.

    Searched at every depth so both `multirun/<run>` and nested layouts work, but never inside
    a run: its `only_val/` or `checkpoints/` folders are part of that run, not runs of their own.
    Hidden folders are skipped. `sweep_dir` itself counts when it is a run (named ".")."""
    root = Path(sweep_dir)
    runs = []
    for current, dirnames, _ in os.walk(root):  # does not follow symlinks: no loops
        path = Path(current)
        if is_run_dir(path):
            runs.append(path)
            dirnames.clear()
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(runs, key=lambda p: p.relative_to(root).as_posix())


# --------------------------------------------------------------------------- overrides

def split_overrides(text: str) -> list[str]:
    """Split Hydra's `override_dirname` (`k=v` items joined by commas) into items.

    Commas inside brackets, braces, parentheses or quotes, or escaped with a backslash, belong to
    the value (`eval_rewards=[a,b]`, `prompt='a, b'`, `name=a\\,b`): that is how Hydra writes
    values holding commas."""
    items, current, depth, quote, escaped = [], [], 0, None, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item for item in items if item]


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["seed=0", "+foo=[a,b]"]` -> `{"seed": "0", "foo": "[a,b]"}`; values stay as typed."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            # Not `k=v`: an unescaped comma of the previous value split it (only possible in a
            # folder name), so glue it back rather than invent a key.
            if parsed:
                last = next(reversed(parsed))
                parsed[last] += "," + item
            continue
        # `+key` / `++key` add a key Hydra did not have; the column is still the config key.
        parsed[key.strip().lstrip("+~")] = value.strip()
    return parsed


def read_overrides(run_dir: Path) -> dict[str, str]:
    """Overrides from `overrides.yaml` (a YAML list of `key=value` strings)."""
    try:
        items = yaml.safe_load((run_dir / "overrides.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunFileError(f"overrides.yaml: {_reason(err)}") from err
    if items is None:
        return {}
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise RunFileError(f"overrides.yaml: expected a list of key=value strings, got {items!r}")
    return parse_overrides(items)


# --------------------------------------------------------------------------- metrics

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: Path, last: int) -> tuple[dict[str, Any], str | None]:
    """({steps, final_train_reward, final_val_reward}, problem or None).

    steps is the step of the last training line, final_train_reward the mean of the last `last`
    training rewards, final_val_reward the last held-out line. File order, not step order:
    after a resume the newest lines are the ones that count. Lines that are not JSON objects
    are skipped and named in the problem, so a run killed mid-line still shows its numbers."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"metrics.jsonl: {_reason(err)}") from err
    train, val_reward, bad = [], None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            bad.append(number)
        elif record.get("split") == "train":
            train.append(record)
        elif record.get("split") == "val" and _is_number(record.get("val_reward")):
            val_reward = record["val_reward"]
    rewards = [r["reward"] for r in train if _is_number(r.get("reward"))][-last:]
    values = {
        "steps": train[-1].get("step") if train else None,
        "final_train_reward": math.fsum(rewards) / len(rewards) if rewards else None,
        "final_val_reward": val_reward,
    }
    problem = None
    if bad:
        which = f"line {bad[0]}" if len(bad) == 1 else f"{len(bad)} lines (first: {bad[0]})"
        problem = f"metrics.jsonl: {which} not a JSON object; the other lines are counted"
    return values, problem


# --------------------------------------------------------------------------- evaluation

def _mean(value: Any, where: str) -> float | None:
    if value is None or _is_number(value):
        return value
    if isinstance(value, dict) and (value.get("mean") is None or _is_number(value.get("mean"))):
        return value.get("mean")
    raise RunFileError(f"eval/summary.json: {where}: expected a number or "
                       f"{{mean, std}}, got {value!r}")


def read_summary(path: Path) -> dict[str, dict[str, Any]]:
    """{metric key: {slot: value}} from `eval/summary.json`, metric keys as written there
    (`reward/colorfulness`, `motion`, `diversity`); slots are model names and COMPARISON_SLOTS.
    Rewards come first, in the order of the summary's `rewards` list."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"eval/summary.json: {_reason(err)}") from err
    except json.JSONDecodeError as err:
        raise RunFileError(f"eval/summary.json: not JSON ({err})") from err
    if not isinstance(summary, dict):
        raise RunFileError("eval/summary.json: expected a JSON object")
    per_model, comparison = summary.get("per_model") or {}, summary.get("comparison") or {}
    for name, part in (("per_model", per_model), ("comparison", comparison)):
        if not isinstance(part, dict) or not all(isinstance(v, dict) for v in part.values()):
            raise RunFileError(f"eval/summary.json: `{name}` must map names to objects")
    listed = [REWARD_PREFIX + r for r in summary.get("rewards") or [] if isinstance(r, str)]
    keys = list(dict.fromkeys([*listed, *(k for m in per_model.values() for k in m),
                               *comparison]))
    keys.sort(key=lambda k: not k.startswith(REWARD_PREFIX))  # stable: rewards, then the rest
    metrics: dict[str, dict[str, Any]] = {}
    for key in keys:
        slots = {model: _mean(stats[key], f"per_model.{model}.{key}")
                 for model, stats in per_model.items() if key in stats}
        result = comparison.get(key)
        if result is not None:
            if not isinstance(result, dict):
                raise RunFileError(f"eval/summary.json: comparison.{key} must be an object")
            for slot, field in zip(COMPARISON_SLOTS, ("mean_delta", "win_rate", "ci_low",
                                                      "ci_high")):
                slots[slot] = _mean(result.get(field), f"comparison.{key}.{field}")
        metrics[key] = slots
    return metrics


# --------------------------------------------------------------------------- one run

def summarise_run(run_dir: str | Path, sweep_dir: str | Path, last: int = 5) -> dict[str, Any]:
    """One run as {run, overrides, training, evaluation, status, note}; never raises for a bad
    file: the problem goes into `status` as `error: <file>: <reason>`."""
    run_dir, sweep_dir = Path(run_dir), Path(sweep_dir)
    errors, notes = [], []
    overrides: dict[str, str] = {}
    if (run_dir / "overrides.yaml").is_file():
        try:
            overrides = read_overrides(run_dir)
        except RunFileError as err:
            errors.append(str(err))
            overrides = parse_overrides(split_overrides(run_dir.name))
            notes.append("overrides from the folder name")
    else:
        # Runs written before train.py saved overrides.yaml: the folder name is Hydra's
        # override_dirname (minus excluded keys, and with "/" written as "_").
        overrides = parse_overrides(split_overrides(run_dir.name))
        notes.append("no overrides.yaml: overrides from the folder name")
    training: dict[str, Any] = dict.fromkeys(TRAINING_COLUMNS)
    has_metrics = False
    if (run_dir / "metrics.jsonl").is_file():
        try:
            training, problem = read_metrics(run_dir / "metrics.jsonl", last)
            has_metrics = training["steps"] is not None or training["final_val_reward"] is not None
            if problem:
                errors.append(problem)
        except RunFileError as err:
            errors.append(str(err))
    evaluation: dict[str, dict[str, Any]] = {}
    has_summary = (run_dir / "eval" / "summary.json").is_file()
    if has_summary:
        try:
            evaluation = read_summary(run_dir / "eval" / "summary.json")
        except RunFileError as err:
            errors.append(str(err))
    if errors:
        status = "error: " + "; ".join(errors)
    elif has_summary:
        status = "complete"
    else:
        status = "no evaluation" if has_metrics else "empty"
    return {"run": run_dir.relative_to(sweep_dir).as_posix(), "overrides": overrides,
            "training": training, "evaluation": evaluation, "status": status,
            "note": "; ".join(notes)}


# --------------------------------------------------------------------------- the table

def _metric_name(key: str, keys: set[str]) -> str:
    """`reward/colorfulness` -> `colorfulness`, unless that clashes with another metric."""
    short = key[len(REWARD_PREFIX):] if key.startswith(REWARD_PREFIX) else key
    return short if short == key or short not in keys else key


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, flat records) for the union of all runs' columns.

    Order: run; override keys that vary across runs, then those that do not (each group in the
    order first met, i.e. as typed on the command line), so the keys that tell runs apart come
    first; training columns; per metric (rewards first) its model columns, then delta, win
    rate and its interval; status; note (only when some run has one)."""
    override_keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    varying = [k for k in override_keys
               if len({row["overrides"].get(k) for row in rows}) > 1
               or any(k not in row["overrides"] for row in rows)]
    override_keys = varying + [k for k in override_keys if k not in varying]
    metric_keys = list(dict.fromkeys(k for row in rows for k in row["evaluation"]))
    metric_keys.sort(key=lambda k: not k.startswith(REWARD_PREFIX))
    slots = list(dict.fromkeys(s for row in rows for m in row["evaluation"].values() for s in m))
    slots.sort(key=lambda s: COMPARISON_SLOTS.index(s) + 1 if s in COMPARISON_SLOTS else 0)
    names = {key: _metric_name(key, set(metric_keys)) for key in metric_keys}
    metric_columns = [(f"{slot}/{names[key]}", key, slot) for key in metric_keys for slot in slots
                      if any(slot in row["evaluation"].get(key, {}) for row in rows)]
    columns = ["run", *override_keys, *TRAINING_COLUMNS, *(c for c, _, _ in metric_columns),
               "status"] + (["note"] if any(row["note"] for row in rows) else [])
    records = []
    for row in rows:
        record = {"run": row["run"], **row["overrides"], **row["training"],
                  "status": row["status"], "note": row["note"]}
        for column, key, slot in metric_columns:
            record[column] = row["evaluation"].get(key, {}).get(slot)
        records.append({c: record.get(c) for c in columns})
    return columns, records


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if _is_number(value):
        return f"{value:.4g}"  # 4 significant digits
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(columns: list[str], records: list[dict[str, Any]]) -> str:
    """A GitHub Markdown table; `win_rate/<m>` becomes one cell "0.75 [0.5, 1]" (rate and
    interval) instead of three columns; numbers to 4 significant digits, right-aligned."""
    shown = [c for c in columns if not c.startswith(("win_ci_low/", "win_ci_high/"))]
    cells = []
    for record in records:
        line = []
        for column in shown:
            text = _fmt(record[column])
            name = column.partition("/")[2]
            low, high = record.get("win_ci_low/" + name), record.get("win_ci_high/" + name)
            if column.startswith("win_rate/") and text and low is not None and high is not None:
                text += f" [{_fmt(low)}, {_fmt(high)}]"
            line.append(text)
        cells.append(line)
    numeric = [all(_is_number(r[c]) or r[c] is None for r in records) and c != "run"
               for c in shown]
    lines = ["| " + " | ".join(_fmt(c) for c in shown) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], records: list[dict[str, Any]]) -> str:
    # str(float) is the shortest repr that reads back to the same float: full precision.
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if r[c] is None else r[c]) for c in columns} for r in records)
    return out.getvalue()


def write_tables(rows: list[dict[str, Any]], csv_path: str | Path, md_path: str | Path) -> str:
    """Write the CSV and the Markdown table of `rows` (from summarise_run); return the Markdown."""
    columns, records = table(rows)
    markdown = to_markdown(columns, records)
    atomic_write_text(Path(csv_path), to_csv(columns, records))
    atomic_write_text(Path(md_path), markdown)
    return markdown


# --------------------------------------------------------------------------- command line

def _reason(err: BaseException) -> str:
    # One line: YAML errors span several, and the reason ends up in a table cell.
    return " ".join((getattr(err, "strerror", None) or str(err) or type(err).__name__).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vader.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="folder of a Hydra multirun, e.g. multirun")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="write PREFIX.csv and PREFIX.md (default: "
                             "<sweep_dir>/sweep_summary.csv and .md)")
    parser.add_argument("--last", type=int, default=5, metavar="N",
                        help="final_train_reward averages the last N training rewards (default 5)")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"error: sweep folder {str(sweep_dir)!r} does not exist or is not a folder; "
              "pass the folder `python train.py -m ...` wrote (multirun by default)",
              file=sys.stderr)
        return 2
    runs = find_runs(sweep_dir)
    if not runs:
        print(f"error: no runs under {str(sweep_dir)!r}: a run folder holds metrics.jsonl, "
              "overrides.yaml or eval/summary.json. Pass the sweep folder itself, e.g. "
              "`python -m vader.sweep multirun` (conf/train.yaml: hydra.sweep.dir)",
              file=sys.stderr)
        return 2
    rows = [summarise_run(run, sweep_dir, args.last) for run in runs]
    prefix = Path(args.out) if args.out else sweep_dir / "sweep_summary"
    if prefix.suffix in (".csv", ".md"):  # `--out table.csv` means the prefix `table`
        prefix = prefix.with_suffix("")
    csv_path, md_path = (prefix.with_name(prefix.name + suffix) for suffix in (".csv", ".md"))
    print(write_tables(rows, csv_path, md_path), end="")
    failed = [row for row in rows if row["status"].startswith("error")]
    print(f"{len(rows)} runs -> {csv_path}, {md_path}", file=sys.stderr)
    for row in failed:
        print(f"  {row['run']}: {row['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
