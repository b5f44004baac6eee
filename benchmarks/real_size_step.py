"""Time and peak memory of one reward-gradient training step of a real-size backbone, with
random weights built from the published configs (nothing downloaded).

    python -m benchmarks.real_size_step --backbone modelscope             # on a GPU
    python -m benchmarks.real_size_step --backbone animatediff --height 256 --width 256 \
        --frames 16 --steps 25 --k 1 --dtype bf16 --repeat 3

One step is what the trainer does: sample N steps (N-K without a graph, K with gradients and
checkpointing), decode the frames the reward asks for, score them (colorfulness, weight-free:
the reward model's own cost is not part of this number), backward, AdamW on the LoRA weights.
One warm-up step, then `--repeat` measured ones; prints one line per step and the median.
"""
from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time

import torch

from backbones.sizes import real_size_backbone
from rewards.colorfulness import Colorfulness
from vader.frames import select_frames
from vader.sampler import cutoff_index, dead_steps, make_noise, sample


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
    args = parser.parse_args()

    t0 = time.perf_counter()
    backbone = real_size_backbone(args.backbone, args.device, args.dtype)
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
    peak = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda" else "n/a on CPU")
    print(f"median step {statistics.median(times):.2f} s   peak GPU memory allocated {peak}")


if __name__ == "__main__":
    main()
