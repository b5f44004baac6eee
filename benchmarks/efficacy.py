"""Efficacy of every algorithm on the shapes world: each starts from the pretrained world model
(backbone=world), gets the same budget of sampled videos, and is judged on the same held-out
prompts by the exact judge (vader/world/judge.py): accuracy per attribute and all together,
before and after, with motion and diversity beside them so a gain bought by freezing the video
or collapsing the seeds shows; plus a reward-hacking row (reward gradients on colourfulness, a
proxy the world's truth does not reward).

    python -m benchmarks.efficacy                                    # all rows, seeds 0 1
    python -m benchmarks.efficacy --rows reward_grad grpo --budget 96 --seeds 0
    python -m benchmarks.efficacy --out outputs/efficacy             # efficacy.csv, .md, .png

Budget = videos each algorithm generates (or, for SFT, clips it reads) while training; the
held-out accuracy is measured at a few points on the way for the plot. Every number printed is
measured by this run; docs/world.md records a run's table with its date and machine.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]

# row -> (Hydra overrides, videos per optimizer step). Settings per algorithm: its conf/algorithm
# defaults plus a budget-sized batch (docs/world.md has a run's numbers).
ROWS: dict[str, tuple[list[str], int]] = {
    # K=3 comes from conf/backbone_defaults/world.yaml; lr 5e-3 (1e-2 and 2e-2 wiped out the
    # background in 40 steps, docs/world.md).
    "reward_grad": (["algorithm=reward_grad", "reward_fn=world_alignment", "lr=5e-3"], 1),
    "grpo": (["algorithm=grpo", "reward_fn=world_judge", "reward_fn.score=attributes", "algorithm.group_size=4",
              "algorithm.groups_per_step=2", "lr=3e-3"], 8),
    "dpo_online": (["algorithm=dpo", "algorithm.pairs=online", "reward_fn=world_judge", "reward_fn.score=attributes",
                    "algorithm.group_size=4", "algorithm.groups_per_step=2",
                    "lr=3e-3"], 8),
    "sft": (["algorithm=sft", "dataset=manifest", "train_batch_size=4", "lr=3e-3",
             "data.num_workers=0"], 4),
    # Reward hacking: colourfulness is not what the prompts ask for.
    "hack_colorfulness": (["algorithm=reward_grad", "reward_fn=colorfulness", "lr=5e-3"], 1),
}
ATTRS = ("background", "colour", "shape", "motion", "all")


def build(row: str, seed: int, run_dir: Path, budget: int, data: Path | None):
    import accelerate.utils
    from hydra import compose, initialize_config_dir

    from vader.build import build_trainer
    from vader.config import register_configs

    overrides, per_step = ROWS[row]
    steps = max(1, budget // per_step)
    extra = [f"dataset.path={data / 'manifest.csv'}"] if row == "sft" else []
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "backbone=world", "prompt_fn=world", *overrides, *extra, f"seed={seed}",
            f"num_steps={steps}", "val_every=100000", f"run_name={row}_seed{seed}",
            f"checkpoint_every={steps}", "eval_rewards=[]", "num_val_seeds=1"])
    accelerate.utils.set_seed(seed)
    trainer = build_trainer(cfg, str(run_dir))
    trainer.setup()
    return trainer, steps, per_step


def measure(trainer, num_seeds: int, base: bool = False) -> dict[str, Any]:
    from vader.evaluation.evaluate import lora_disabled, set_lora_dropout
    from vader.world.accuracy import heldout_accuracy
    model = trainer.accelerator.unwrap_model(trainer.model)
    set_lora_dropout(model, False)
    with lora_disabled(model) if base else contextlib.nullcontext():
        result = heldout_accuracy(trainer.backbone, model, num_seeds)
    # "videos" in a row is the training budget spent; the evaluation's count is another column
    result["eval_videos"] = result.pop("videos")
    return result


def run_row(row: str, seed: int, budget: int, points: int, num_seeds: int, work: Path,
            data: Path | None, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One algorithm and seed: `points` measurements on the way to `budget` videos, after the
    base model's (`base`: the same for every row, since evaluation noise depends only on the
    evaluation seeds; measured once with `measure(..., base=True)`)."""
    trainer, steps, per_step = build(row, seed, work / f"{row}_seed{seed}", budget, data)
    marks = sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})
    if not base:
        base.update(measure(trainer, num_seeds, base=True))
    out = [{"row": row, "seed": seed, "videos": 0, "seconds": 0.0, "train_reward": None, **base}]
    seconds, rewards = 0.0, []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        record = trainer.train_step()
        seconds += time.perf_counter() - start
        if "reward" in record:
            rewards.append(float(record["reward"]))
        if step in marks:
            out.append({"row": row, "seed": seed, "videos": step * per_step, "seconds": round(seconds, 1),
                        "train_reward": sum(rewards[-5:]) / len(rewards[-5:]) if rewards else None,
                        **measure(trainer, num_seeds)})
            print(_line(out[-1]), flush=True)
    return out


def _line(r: dict[str, Any]) -> str:
    acc = " ".join(f"{a} {r[f'accuracy/{a}']:.3f}" for a in ATTRS)
    return (f"{r['row']:>18} seed {r['seed']} videos {r['videos']:>4}: {acc} | motion "
            f"{r['motion']:.4f} diversity {r.get('diversity', float('nan')):.5f} | {r['seconds']:.0f} s")


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = ["row", "seed", "videos", "seconds", "train_reward", *[f"accuracy/{a}" for a in ATTRS],
            "motion", "diversity"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "efficacy.csv").write_text(buffer.getvalue())
    (out / "efficacy.md").write_text(table(rows))
    plot(rows, out / "efficacy.png")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per row, the base and the end of training, means over seeds."""
    import statistics
    lines = ["| row | seeds | videos | " + " | ".join(f"{a} before → after" for a in ATTRS)
             + " | motion before → after | diversity before → after | train s |",
             "|---" * (7 + len(ATTRS)) + "|"]

    def mean(rs, k):  # nan where nothing was measured (diversity needs 2+ seeds a prompt)
        values = [r[k] for r in rs if r.get(k) is not None]
        return statistics.fmean(values) if values else float("nan")

    for name in dict.fromkeys(r["row"] for r in rows):
        mine = [r for r in rows if r["row"] == name]
        seeds = sorted({r["seed"] for r in mine})
        first = [min((r for r in mine if r["seed"] == s), key=lambda r: r["videos"]) for s in seeds]
        last = [max((r for r in mine if r["seed"] == s), key=lambda r: r["videos"]) for s in seeds]
        cells = [f"{mean(first, f'accuracy/{a}'):.3f} → {mean(last, f'accuracy/{a}'):.3f}" for a in ATTRS]
        cells += [f"{mean(first, k):.4f} → {mean(last, k):.4f}" for k in ("motion", "diversity")]
        lines.append(f"| {name} | {','.join(map(str, seeds))} | {last[0]['videos']} | "
                     + " | ".join(cells) + f" | {mean(last, 'seconds'):.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["row"] for r in rows):
        for seed in sorted({r["seed"] for r in rows if r["row"] == name}):
            mine = sorted((r for r in rows if r["row"] == name and r["seed"] == seed),
                          key=lambda r: r["videos"])
            ax.plot([r["videos"] for r in mine], [r["accuracy/all"] for r in mine], "o-",
                    label=f"{name} seed {seed}", alpha=0.8)
    ax.set_xlabel("videos sampled (SFT: clips read)")
    ax.set_ylabel("held-out accuracy, all attributes (judge)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--budget", type=int, default=64, help="videos sampled per run")
    parser.add_argument("--points", type=int, default=2, help="accuracy measurements per run")
    parser.add_argument("--eval-seeds", type=int, default=2, help="seeds per held-out prompt")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "efficacy")
    args = parser.parse_args()

    import tempfile

    import torch
    work = Path(tempfile.mkdtemp(prefix="efficacy_"))
    data = None
    if "sft" in args.rows:
        from vader.world.dataset import write_dataset
        data = work / "shapes"
        write_dataset(data, 540, split="train", seed=7)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {args.budget} videos")
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] = {}
    for row in args.rows:
        for seed in args.seeds:
            rows += run_row(row, seed, args.budget, args.points, args.eval_seeds, work, data, base)
            write(rows, args.out)
    print(table(rows))
    print(f"wrote {args.out}/efficacy.csv, efficacy.md, efficacy.png")


if __name__ == "__main__":
    main()
