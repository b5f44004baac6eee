"""Time and peak memory of one reward-gradient training step of a real-size backbone, with
random weights built from the published configs (nothing downloaded).

    python -m benchmarks.real_size_step --backbone modelscope             # on a GPU
    python -m benchmarks.real_size_step --backbone animatediff --height 256 --width 256 \
        --frames 16 --steps 25 --k 1 --dtype bf16 --repeat 3

One step is what the trainer does: sample N steps (N-K without a graph, K with gradients and
checkpointing), decode the frames the reward asks for, score them (colorfulness, weight-free:
the reward model's own cost is not part of this number), backward, AdamW on the LoRA weights.
One warm-up step, then `--repeat` measured ones; prints one line per step and the median, the
time to sample the same video without gradients (and the ratio), peak GPU memory, peak host
memory (max RSS), and the FLOPs of one step (counted by torch.utils.flop_counter on a separate,
untimed step) as achieved FLOP/s and as a share of the device's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import resource
import statistics
import time
from pathlib import Path

import torch

from backbones.sizes import real_size_backbone
from rewards.colorfulness import Colorfulness
from vader.frames import select_frames
from vader.sampling.differentiable import cutoff_index, dead_steps, make_noise, sample


def one_step(backbone, reward, optimizer, args, seed: int) -> float:
    device = backbone.device
    noise = make_noise(backbone.latent_shape(1, args.frames, args.height, args.width), [seed], device)
    cutoff = cutoff_index("last", args.steps, args.k, dead=dead_steps(backbone.make_scheduler, args.steps))
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        latents = sample(backbone, backbone.trainable_module(), ["a dog riding a bike"], noise,
                         num_inference_steps=args.steps, guidance_scale=args.guidance, cutoff=cutoff)
        frames = backbone.decode(latents, select_frames(reward.frames, args.frames, random.Random(seed)))
        score, _ = reward(frames, ["a dog riding a bike"])
    (-score.mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="modelscope",
                        choices=["modelscope", "animatediff", "animatediff_lightning"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--reward-frames", default="random", help="all | random | n (every n-th)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint-blocks", action=argparse.BooleanOptionalAction, default=True,
                        help="checkpoint each layer of the UNet blocks (backbone.checkpoint_blocks)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak; default: "
                        "looked up for H100/H200/A100, else FLOP/s alone")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    t0 = time.perf_counter()
    backbone = real_size_backbone(args.backbone, args.device, args.dtype,
                                  checkpoint_blocks=args.checkpoint_blocks)
    built = time.perf_counter() - t0
    frames = args.reward_frames if args.reward_frames in ("all", "random") else int(args.reward_frames)
    reward = Colorfulness(frames=frames)
    lora = [p for p in backbone.trainable_module().parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {datetime.date.today()}  {name}  torch {torch.__version__}  {args.backbone}  "
          f"{args.height}x{args.width}x{args.frames}  N={args.steps} K={args.k}  {args.dtype}  "
          f"reward frames={args.reward_frames}  LoRA params {sum(p.numel() for p in lora):,}  "
          f"built in {built:.1f} s")
    one_step(backbone, reward, optimizer, args, seed=0)  # warm-up: kernels, allocator, autotune
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.repeat):
        times.append(one_step(backbone, reward, optimizer, args, seed=i + 1))
        print(f"step {i + 1}: {times[-1]:.2f} s")
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    sampled = [sample_only(backbone, args, seed=i + 1) for i in range(args.repeat)]
    flops = count_flops(backbone, reward, optimizer, args)
    step, sample_s = statistics.median(times), statistics.median(sampled)
    host_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    achieved = flops / step / 1e12
    print(f"median step {step:.2f} s   sampling without gradients {sample_s:.2f} s   ratio "
          f"{step / sample_s:.3f}")
    print(f"peak GPU memory allocated {f'{peak_gib:.2f} GiB' if peak_gib is not None else 'n/a on CPU'}"
          f"   peak host memory (max RSS) {host_gib:.2f} GiB")
    share = f" = {achieved / peak_tflops:.1%} of {peak_tflops:.0f}" if peak_tflops else ""
    print(f"{flops / 1e12:.1f} TFLOP per step, {achieved:.1f} TFLOP/s achieved{share}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": str(datetime.date.today()), "device": name, "args": {k: str(v) for k, v in vars(args).items()},
            "step_seconds": times, "sample_seconds": sampled, "peak_gpu_gib": peak_gib,
            "host_max_rss_gib": host_gib, "tflop_per_step": flops / 1e12,
            "achieved_tflops": achieved, "peak_tflops": peak_tflops}, indent=2))


# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts).
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def sample_only(backbone, args, seed: int) -> float:
    device = backbone.device
    noise = make_noise(backbone.latent_shape(1, args.frames, args.height, args.width), [seed], device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
        latents = sample(backbone, backbone.trainable_module(), ["a dog riding a bike"], noise,
                         num_inference_steps=args.steps, guidance_scale=args.guidance)
        backbone.decode(latents)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_flops(backbone, reward, optimizer, args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        one_step(backbone, reward, optimizer, args, seed=10_000)
    return float(counter.get_total_flops())


if __name__ == "__main__":
    main()
