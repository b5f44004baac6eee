"""Where metrics go: always a JSON-lines file in the run directory (one line per step), and
optionally tensorboard or wandb through accelerate's trackers. Only the main process writes."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from vader.io.files import atomic_write, atomic_write_text

LOGGERS = ("none", "tensorboard", "wandb")


def check_logger(logger: str) -> None:
    if logger not in LOGGERS:
        raise ValueError(f"logger={logger!r}: choose one of {LOGGERS}")
    needs = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(logger)
    if needs and importlib.util.find_spec(needs) is None:
        raise ValueError(f"logger={logger} needs the {needs} package: pip install {needs} "
                         "(or run with logger=none)")


def tracker_kwargs(logger: str, run_dir: Path) -> dict[str, Any]:
    """Arguments for `Accelerator(...)`. wandb runs offline unless the user set WANDB_MODE, so it
    needs no account or network; `wandb sync` uploads later."""
    if logger == "none":
        return {}
    if logger == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
    return {"log_with": logger, "project_dir": str(run_dir)}


class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int, keep_val_at_step: bool) -> None:
        """Forget what a killed run logged after its checkpoint at `step`: the resumed run logs
        those steps again, and the log (and the plot drawn from it) would show them twice.
        Training records up to `step` stay; so does the evaluation at `step` if
        `keep_val_at_step` (it ran after the save and the resumed run does not repeat it). A last
        line cut short by the kill is dropped too."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record["step"] < step or record["step"] == step and (
                    record.get("split") != "val" or keep_val_at_step):
                kept.append(json.dumps(record) + "\n")
        atomic_write_text(self.path, "".join(kept), fsync=True)


def plot_rewards(records: list[dict[str, Any]], path: Path, base: float | None = None) -> Path | None:
    """Training reward per step and held-out reward at each evaluation, as a PNG; `base`, the
    base model's held-out reward, as a dashed line to read the gain against. Algorithms that
    train on data (SFT, offline DPO) have no training reward: only the held-out curve is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["reward"]) for r in records
             if r.get("split") == "train" and "reward" in r]
    val = [(r["step"], r["val_reward"]) for r in records if r.get("split") == "val"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train reward (batch mean)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="held-out reward, tuned (mean)")
    if base is not None:
        ax.axhline(base, color="grey", linestyle="--", label="held-out reward, base model")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def plot_metrics(records: list[dict[str, Any]], path: Path, base: dict[str, float]) -> Path | None:
    """The eval_metrics (and FVD) of the tuned model at each evaluation, one panel each, with
    the base model's value dashed; nothing when none were asked for."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: [(r["step"], r[f"val/{name}"]) for r in records
                     if r.get("split") == "val" and r.get(f"val/{name}") is not None]
              for name in base}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        ax.plot(*zip(*points), "o-", label="tuned")
        if base.get(name) is not None:
            ax.axhline(base[name], color="grey", linestyle="--", label="base")
        ax.set_title(name + (" (lower is better)" if name == "fvd" else ""), fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
