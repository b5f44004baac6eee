"""Score existing videos with any reward config and write a table.

    python -m vader.score outputs/run/eval videos/a.mp4 reward_fn=colorfulness
    python -m vader.score clips/ reward_fn=hps --out scores.json --prompt "a cat surfing"
    python -m vader.score clips/ reward_fn=aesthetic --prompts prompts.csv --num-frames 16

Arguments with `=` are Hydra overrides of conf/train.yaml (only `reward_fn` is built); the rest
are video files or folders (searched recursively). Each video is read with decord, `--num-frames`
frames are taken evenly across it, and the reward sees them as one (1, T, 3, H, W) clip in
[0, 1]. The prompt of a video comes from `--prompts` (a CSV with columns `path`/`file` and
`prompt`), else `--prompt`, else its file name (`a_cat_surfing.mp4` -> "a cat surfing").
A file that cannot be read or scored becomes a row with an `error` and the rest go on; the exit
code is 1 when any file failed, after the table is written.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from vader.frames import score as score_frames, select_frames
from vader.protocols import info_numbers

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


def find_videos(paths: list[str]) -> list[Path]:
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{name}: no such file or folder")
    return found


def read_video(path: Path, num_frames: int) -> torch.Tensor:
    """(1, T, 3, H, W) float in [0, 1], T = num_frames taken evenly over the whole video."""
    import decord
    reader = decord.VideoReader(str(path))
    if len(reader) == 0:
        raise ValueError("the video has no frames")
    index = torch.linspace(0, len(reader) - 1, min(num_frames, len(reader))).round().long()
    frames = torch.from_numpy(reader.get_batch(index.tolist()).asnumpy())  # (T, H, W, 3) uint8
    return (frames.permute(0, 3, 1, 2).float() / 255).unsqueeze(0)


def load_prompts(csv_path: str | None) -> dict[str, str]:
    if csv_path is None:
        return {}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = "path" if rows and "path" in rows[0] else "file"
    if not rows or key not in rows[0] or "prompt" not in rows[0]:
        raise ValueError(f"--prompts {csv_path}: needs a header with `path` (or `file`) and `prompt`")
    return {row[key]: row["prompt"] for row in rows}


def prompt_for(path: Path, table: dict[str, str], default: str | None) -> str:
    for key in (str(path), path.name, path.stem):
        if key in table:
            return table[key]
    return default if default is not None else path.stem.replace("_", " ").replace("-", " ")


def build_reward(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from vader.build import build
    from vader.config import check_targets, register_configs
    register_configs()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    check_targets(cfg.reward_fn, "reward_fn")
    return build(cfg.reward_fn)


def score(videos: list[Path], reward, prompts: dict[str, str], prompt: str | None,
          num_frames: int) -> list[dict]:
    rows, rng = [], random.Random(0)  # frames="random" rewards: the same pick on every rerun
    for path in tqdm(videos, desc="scoring", unit="video"):
        row = {"path": str(path), "prompt": prompt_for(path, prompts, prompt)}
        try:
            frames = read_video(path, num_frames)
            index = select_frames(reward.frames, frames.shape[1], rng)
            if index is not None:
                frames = frames[:, index]
            with torch.no_grad():  # scoring only; the rewards stay differentiable for training
                value, info = score_frames(reward, frames, [row["prompt"]], [rng])
            row.update(reward=float(value[0]), frames=int(frames.shape[1]),
                       **{k: float(v) if isinstance(v, torch.Tensor) else v
                          for k, v in info_numbers(info).items()})
        except Exception as err:  # one bad file must not stop the others
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    return rows


def write_table(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(rows, indent=2))
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m vader.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="video files or folders, and key=value overrides")
    parser.add_argument("--out", default="scores.csv", help="table to write: .csv or .json")
    parser.add_argument("--prompt", default=None, help="one prompt for every video")
    parser.add_argument("--prompts", default=None, help="CSV with columns path (or file), prompt")
    parser.add_argument("--num-frames", type=int, default=16, help="frames taken evenly per video")
    args = parser.parse_args(argv)
    overrides = [a for a in args.inputs if "=" in a]
    paths = [a for a in args.inputs if "=" not in a]
    if not paths:
        parser.error("give at least one video file or folder")
    if args.num_frames < 1:
        parser.error("--num-frames must be at least 1")
    videos = find_videos(paths)
    if not videos:
        parser.error(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {paths}")
    reward = build_reward(overrides)
    rows = score(videos, reward, load_prompts(args.prompts), args.prompt, args.num_frames)
    write_table(rows, Path(args.out))
    failed = [r for r in rows if "error" in r]
    print(f"scored {len(rows) - len(failed)} of {len(rows)} videos -> {args.out}", file=sys.stderr)
    for row in failed:
        print(f"  error: {row['path']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
