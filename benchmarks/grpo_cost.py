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
           0.5 and 1.0 (and 1.0 at twice the sampling steps: the update's memory must not grow
           with them), and one reward-gradient step (`backprop_steps=1`) of `--videos` videos,
           each in a fresh process after a warm-up step: seconds, and peak memory above what
           the process held when the step began (CUDA: max allocated; CPU: resident set size
           polled every millisecond, which also counts allocator caches), and the bytes
           autograd holds for backward after one micro-batch's forward (`saved MiB`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
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


def one_case(args: argparse.Namespace) -> dict:
    """Run in a fresh process: a warm-up step, then the measured one (its seconds and its peak
    memory above what the process held when it began)."""
    name, _, steps = args.case.partition("@")  # e.g. "grpo:0.5@20": 20 sampling steps
    if name == "reward_grad":
        overrides = [f"train_batch_size={args.videos}", "backprop_steps=1"]
    else:
        overrides = ["algorithm=grpo", f"algorithm.group_size={args.videos}",
                     "algorithm.groups_per_step=1", f"train_batch_size={args.videos}",
                     f"algorithm.timestep_fraction={name.split(':')[1]}"]
    if steps:
        overrides.append(f"num_inference_steps={steps}")
    trainer = build([*video_args(args), *overrides])
    trainer.train_step()
    sync()

    saved = saved_for_backward(trainer) if name == "reward_grad" or not torch.cuda.is_available() \
        else None
    rollout_memory = None
    if name != "reward_grad":  # the rollout alone, so the step's peak can be told apart
        _, rollout_memory = peak(lambda: trainer.algorithm.plan(trainer.step))
    record, memory = peak(trainer.train_step)
    key = "update_seconds" if name != "reward_grad" else "seconds"
    return {"seconds": record[key], "step_seconds": record["seconds"],
            "rollout_seconds": record.get("rollout_seconds"), "peak_bytes": memory,
            "rollout_peak_bytes": rollout_memory, "saved_bytes": saved}


def peak(fn):
    """fn's result and its peak memory above what was held when it began (CUDA: max allocated;
    CPU: the resident set size, polled)."""
    from benchmarks.memory_vs_steps import RssPeak

    if torch.cuda.is_available():
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        return out, torch.cuda.max_memory_allocated() - base
    with RssPeak() as rss:
        out = fn()
    return out, rss.peak - rss.base


def saved_for_backward(trainer) -> int:
    """The most bytes autograd holds for backward after one micro-batch's forward pass, weights
    left out (what a step's activations cost, independent of allocator caches). Gradient
    checkpointing hides what it saves, so it is switched off for this count: the checkpointed
    backward recomputes the same forward and holds the same tensors then."""
    weights = {p.untyped_storage().data_ptr() for p in trainer.backbone.trainable_module().parameters()}
    held: dict[int, int] = {}
    most = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            held[storage.data_ptr()] = storage.nbytes()
        return t

    loss = trainer.algorithm.loss

    def counted(item):
        nonlocal most
        held.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = loss(item)
        most = max(most, sum(held.values()))
        return result

    checkpointing = trainer.cfg.gradient_checkpointing
    trainer.cfg.gradient_checkpointing = False
    trainer.algorithm.loss = counted
    try:
        trainer.train_step()
    finally:
        trainer.algorithm.loss = loss
        trainer.cfg.gradient_checkpointing = checkpointing
    return most


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
    forwarded = [f"--steps={args.steps}", f"--frames={args.frames}", f"--height={args.height}",
                 f"--width={args.width}", f"--videos={args.videos}", f"--threads={args.threads}",
                 *(["--override", *args.override] if args.override else [])]
    for case in ("reward_grad", "grpo:0.5", "grpo:1.0", f"grpo:1.0@{2 * args.steps}"):
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
    print(f"{'':>14} {'seconds':>8} {'saved MiB':>10} {'step peak MiB':>14} {'rollout s':>10} "
          f"{'rollout peak MiB':>17}   (grpo seconds: the update alone)")
    for case, r in result["update"].items():
        saved = f"{r['saved_bytes'] / 2**20:>10.1f}" if r["saved_bytes"] is not None else f"{'':>10}"
        rollout = (f"{r['rollout_seconds']:>10.2f} {r['rollout_peak_bytes'] / 2**20:>17.1f}"
                   if r["rollout_seconds"] else "")
        print(f"{case:>14} {r['seconds']:>8.2f} {saved} {r['peak_bytes'] / 2**20:>14.1f} {rollout}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "device": device, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
