"""What GRPO costs: rollout throughput against our plain no-grad sampler on the same videos, and
one GRPO update's time and peak memory against one reward-gradient step.

    python -m benchmarks.grpo_cost                        # tiny backbone, 8x32x32 videos, T=10
    python -m benchmarks.grpo_cost --steps 25 --repeats 7 --json outputs/grpo_cost.json
    python -m benchmarks.grpo_cost --override backbone=modelscope backbone.pretrained=/models/ms

rollout    `vader.sampling.stochastic.rollout` (DDIM eta, every step recorded as a Gaussian
           with its log-probability) of `--videos` videos in one batch, then
sample     `vader.sampling.differentiable.sample` under no_grad with the same eta and noise:
           interleaved rounds, the ratio taken within each round (median and range).
update     one GRPO step's update (rollouts excluded: `update_seconds`) at timestep_fraction
           0.5 and 1.0, and one reward-gradient step (`backprop_steps=1`) of `--videos` videos,
           each in a fresh process: seconds of the second step, and peak memory of the first
           (CUDA: max allocated during the step; CPU: growth of the process's peak RSS over what
           setup left, which also counts allocator caches).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from vader.build import build_trainer
    from vader.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "run_name=bench", "logger=none",
                                                      "val_every=1000000"])
    torch.manual_seed(0)
    trainer = build_trainer(cfg, tempfile.mkdtemp(prefix="vader-bench-"))
    trainer.setup()
    return trainer


def video_args(args: argparse.Namespace) -> list[str]:
    return [f"num_inference_steps={args.steps}", f"num_frames={args.frames}",
            f"height={args.height}", f"width={args.width}", *args.override]


def throughput(args: argparse.Namespace) -> dict:
    from vader.sampling.differentiable import make_noise, sample
    from vader.sampling.stochastic import rollout

    trainer = build([*video_args(args), "algorithm=grpo"])
    backbone, cfg = trainer.backbone, trainer.cfg
    model = trainer.accelerator.unwrap_model(trainer.model)
    eta = trainer.algorithm.eta
    prompts = [trainer.prompts.train[i % len(trainer.prompts.train)] for i in range(args.videos)]
    seeds = list(range(args.videos))
    noise = make_noise(backbone.latent_shape(args.videos, cfg.num_frames, cfg.height, cfg.width), seeds,
                       trainer.accelerator.device)
    kwargs = dict(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                  eta=eta, step_seeds=seeds)
    fns = {"rollout": lambda: rollout(backbone, model, prompts, noise, **kwargs),
           "sample": lambda: sample(backbone, model, prompts, noise, **kwargs)}
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up
        for r in range(args.repeats):
            for name in (("rollout", "sample") if r % 2 == 0 else ("sample", "rollout")):
                sync()
                start = time.perf_counter()
                fns[name]()
                sync()
                seconds[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(seconds["rollout"], seconds["sample"])]
    return {"videos_per_second": {k: args.videos / statistics.median(v) for k, v in seconds.items()},
            "rollout/sample": {"median": statistics.median(ratios), "min": min(ratios),
                               "max": max(ratios)}}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def one_case(args: argparse.Namespace) -> dict:
    """Run in a fresh process: one step for memory, a second for time."""
    if args.case == "reward_grad":
        overrides = [f"train_batch_size={args.videos}", "backprop_steps=1"]
    else:
        overrides = ["algorithm=grpo", f"algorithm.group_size={args.videos}",
                     "algorithm.groups_per_step=1", f"train_batch_size={args.videos}",
                     f"algorithm.timestep_fraction={args.case.split(':')[1]}"]
    trainer = build([*video_args(args), *overrides])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    before = peak_bytes()
    trainer.train_step()
    memory = peak_bytes() - (0 if torch.cuda.is_available() else before)
    sync()
    record = trainer.train_step()
    key = "update_seconds" if args.case != "reward_grad" else "seconds"
    return {"seconds": record[key], "step_seconds": record["seconds"],
            "rollout_seconds": record.get("rollout_seconds"), "peak_bytes": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="num_inference_steps")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--videos", type=int, default=4, help="videos per batch (GRPO: one group)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved throughput rounds")
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: one update case, JSON to stdout
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(one_case(args)))
        return

    result = {"throughput": throughput(args), "update": {}}
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--json")]
    for case in ("reward_grad", "grpo:0.5", "grpo:1.0"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.grpo_cost", *forwarded,
                              "--case", case], capture_output=True, text=True, check=True)
        result["update"][case] = json.loads(out.stdout.strip().splitlines()[-1])
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"device {device} ({args.threads} threads)")
    print(f"# video {args.frames}x{args.height}x{args.width}, T={args.steps}, {args.videos} videos "
          f"per batch" + (f", overrides {' '.join(args.override)}" if args.override else ""))
    t = result["throughput"]
    print(f"rollout {t['videos_per_second']['rollout']:.3f} videos/s, plain sampling "
          f"{t['videos_per_second']['sample']:.3f} videos/s: rollout/sample "
          f"{t['rollout/sample']['median']:.3f} (range {t['rollout/sample']['min']:.3f}-"
          f"{t['rollout/sample']['max']:.3f}, {args.repeats} rounds)")
    print(f"{'':>12} {'seconds':>8} {'peak MiB':>9}   (grpo: the update alone; its rollout apart)")
    for case, r in result["update"].items():
        extra = f"   rollout {r['rollout_seconds']:.2f} s" if r["rollout_seconds"] else ""
        print(f"{case:>12} {r['seconds']:>8.2f} {r['peak_bytes'] / 2**20:>9.1f}{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "device": device, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
