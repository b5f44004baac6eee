"""Held-out reward before and after training, for every setting a learning test runs, over more
seeds than the tests use: the margins written beside those tests come from here.

    python -m benchmarks.learning_margins                          # every setting, seeds 0-5
    python -m benchmarks.learning_margins --settings xclip hps --seeds 0 1 2 3
    python -m benchmarks.learning_margins --json outputs/margins.json
    python -m benchmarks.learning_margins --settings object --override lr=2e-2 num_steps=12

Prints one row per (setting, seed) and one summary row per setting: the mean and the smallest
gain, and how many seeds improved. The settings are `tests.learning.SETTINGS` on the tiny random
reward models of the tests (tests/tiny_*.py), so this measures exactly what the tests run.
`--settings default_job` runs the README's main job itself (`python train.py seed=N`, about
3 min a seed on 2 cores) and reads its held-out alignment from eval/summary.json: the world
judge's accuracy averaged over the four attributes (docs/world.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models are written locally
os.environ.setdefault("TQDM_DISABLE", "1")    # one line per run, not progress bars
ROOT = Path(__file__).resolve().parents[1]


def default_job(seed: int, run_dir: Path, *overrides: str):
    """The README's main job with `seed`; its held-out alignment before and after."""
    from tests.learning import Outcome

    proc = subprocess.run([sys.executable, "train.py", f"seed={seed}", f"hydra.run.dir={run_dir}",
                           *overrides], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"train.py seed={seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    return Outcome(seed, *(attribute_accuracy(summary, m) for m in ("base", "tuned")))


def attribute_accuracy(summary: dict, model: str) -> float:
    """The world judge's held-out accuracy of `model` in an eval/summary.json, averaged over its
    four attributes (the share of attributes right: the judge's `score=attributes`)."""
    from vader.world.grammar import ATTRIBUTES
    return statistics.fmean(summary["per_model"][model][f"reward/world_judge/{a}"]["mean"]
                            for a in ATTRIBUTES)


def main() -> None:
    from tests.learning import SETTINGS, reward_folders, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*SETTINGS, "default_job"]
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=names)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--override", nargs="+", default=[],
                        help="Hydra overrides added to every setting (to try a new one)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vader-margins-") as tmp:
        folders = reward_folders(Path(tmp) / "models", tuple(set(args.settings) & set(SETTINGS)))
        print(f"{'setting':<11} {'seed':>4} {'before':>9} {'after':>9} {'gain':>9} {'s':>5}")
        for name in args.settings:
            for seed in args.seeds:
                start = time.perf_counter()
                run_dir = Path(tmp) / f"{name}-{seed}"
                out = (train(name, folders, seed, run_dir, *args.override) if name in SETTINGS
                       else default_job(seed, run_dir, *args.override))
                rows.append({"setting": name, "seed": seed, "before": out.before,
                             "after": out.after, "gain": out.gain})
                print(f"{name:<11} {seed:>4} {out.before:>9.4f} {out.after:>9.4f} "
                      f"{out.gain:>+9.4f} {time.perf_counter() - start:>5.1f}", flush=True)
    print(f"\n{'setting':<11} {'mean gain':>10} {'min gain':>10} {'improved':>9}")
    for name in args.settings:
        gains = [r["gain"] for r in rows if r["setting"] == name]
        print(f"{name:<11} {statistics.fmean(gains):>+10.4f} {min(gains):>+10.4f} "
              f"{sum(g > 0 for g in gains):>4}/{len(gains)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
