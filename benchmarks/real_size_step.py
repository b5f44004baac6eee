"""Time and peak memory of one reward-gradient training step of a real-size backbone, with
random weights built from the published configs (nothing downloaded).

    python -m benchmarks.real_size_step --backbone modelscope             # on a GPU
    python -m benchmarks.real_size_step --backbone animatediff --height 256 --width 256 \
        --frames 16 --steps 25 --k 1 --dtype bf16 --repeat 3
    # Wan2.1-T2V-1.3B at Flow-GRPO's Wan sampling settings (the defaults for wan):
    python -m benchmarks.real_size_step --backbone wan          # 33x240x416, T=20, guidance 4.5, K=1
    # ... at VideoX-Fun's reward-backprop LoRA settings (81x256x256, T=30, guidance 6, K=5,
    # frame 0 decoded):
    python -m benchmarks.real_size_step --backbone wan --frames 81 --height 256 --width 256 \
        --steps 30 --guidance 6 --k 5 --decode-frames 0
    python -m benchmarks.real_size_step --backbone cogvideox_2b --decode-frames 0   # 49x480x720, T=50
    bash benchmarks/gpu_dit.sh          # the three above in one go on a lent GPU

Defaults per backbone (each flag overrides): the UNets 16x256x256, T=25, guidance 7.5; wan
33x240x416, T=20, guidance 4.5; cogvideox_2b / cogvideox_5b 49x480x720 (as released), T=50,
guidance 6 (CogVideoXPipeline's defaults); K=1 for all. Wan and CogVideoX come from
`backbones.sizes.real_size_dit`: their umT5-XXL / T5-XXL text encoders (5.7 B / 4.8 B) are
replaced by a stand-in giving embeddings of the real shape (512 / 226 tokens of width 4096). A
training step never runs the encoder (embeddings are cached, the encoder offloaded), so the
numbers exclude it, and the header says so.

One step is what the trainer does: sample N steps (N-K without a graph, K with gradients and
checkpointing), decode the frames the reward asks for (`--reward-frames`, or exactly the frames
`--decode-frames` names: the causal video VAEs then decode only the latent prefix reaching them),
score them (colorfulness, weight-free: the reward model's own cost is not part of this number),
backward, AdamW on the LoRA weights. One warm-up step, whose FLOPs torch.utils.flop_counter
counts, then `--repeat` measured ones; prints one line per step and the median, the time to
sample the same video without gradients (every frame decoded) and the ratio, peak GPU memory,
peak host memory (max RSS), and the FLOPs of one step as achieved FLOP/s and as a share of the
device's dense bf16 peak. With `--reward-frames random` the decoded prefix, and so a step's
time, memory and FLOPs, vary with the frame drawn. Out of GPU memory in a training step, it prints
the peak reached and exits with status 3.
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

from backbones.sizes import DIT_CONFIGS, real_size_backbone
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
        index = torch.tensor(args.decode_frames) if args.decode_frames else \
            select_frames(reward.frames, args.frames, random.Random(seed))
        frames = backbone.decode(latents, index)
        score, _ = reward(frames, ["a dog riding a bike"])
    (-score.mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# Per backbone when a flag is not given: (frames, height, width, steps, guidance). Wan: Flow-GRPO's
# Wan2.1 sampling settings; CogVideoX: the released size and CogVideoXPipeline's defaults.
DEFAULTS = {"modelscope": (16, 256, 256, 25, 7.5), "animatediff": (16, 256, 256, 25, 7.5),
            "animatediff_lightning": (16, 256, 256, 25, 7.5), "wan": (33, 240, 416, 20, 4.5),
            "cogvideox_2b": (49, 480, 720, 50, 6.0), "cogvideox_5b": (49, 480, 720, 50, 6.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="modelscope", choices=list(DEFAULTS))
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--vae-dtype", choices=["bf16", "fp16", "fp32"],
                        help="default: conf/backbone's (wan: fp32), else --dtype")
    parser.add_argument("--reward-frames", default="random", help="all | random | n (every n-th)")
    parser.add_argument("--decode-frames", type=lambda v: [int(i) for i in v.split(",")],
                        help="comma-separated frame indices to decode and score instead of "
                             "--reward-frames, e.g. 0 (VideoX-Fun's first frame)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint-blocks", action=argparse.BooleanOptionalAction, default=True,
                        help="checkpoint each layer of the UNet blocks / each transformer block "
                             "(backbone.checkpoint_blocks)")
    parser.add_argument("--vae-checkpointing", action="store_true",
                        help="also checkpoint the VAE's own blocks where diffusers can "
                             "(CogVideoX, not Wan); not something the trainer does")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak; default: "
                        "looked up for H100/H200/A100, else FLOP/s alone")
    parser.add_argument("--rollout-videos", type=int, default=0,
                        help="also time GRPO's rollout (vader.sampling.stochastic.rollout, eta 1) of "
                             "this many videos in one batch: videos/s")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny random backbone (backbones/tiny.py) in place of the real-size "
                             "one: the same code path in seconds on a CPU, for the test that keeps "
                             "this script working")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    for key, value in zip(("frames", "height", "width", "steps", "guidance"), DEFAULTS[args.backbone]):
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if args.tiny:
        from backbones.tiny import tiny

        backbone = tiny(checkpoint_blocks=args.checkpoint_blocks).to(args.device)
    else:
        backbone = real_size_backbone(args.backbone, args.device, args.dtype,
                                      checkpoint_blocks=args.checkpoint_blocks, vae_dtype=args.vae_dtype)
    if args.vae_checkpointing:
        backbone.vae.enable_gradient_checkpointing()
    built = time.perf_counter() - t0
    frames = args.reward_frames if args.reward_frames in ("all", "random") else int(args.reward_frames)
    reward = Colorfulness(frames=frames)
    lora = [p for p in backbone.trainable_module().parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    decoded = f"decoded frames {args.decode_frames}" if args.decode_frames else \
        f"reward frames={args.reward_frames}"
    vae_dtype = str(backbone.vae.dtype).removeprefix("torch.")
    stand_in = ""
    if args.backbone in DIT_CONFIGS:  # the shape the transformer gets, from the (cached) stand-in
        tokens, width = backbone.encode_prompts(["a dog riding a bike"]).shape[1:]
        stand_in = f"  text encoder: a stand-in ({tokens}x{width} embeddings), not in the numbers"
    label = f"tiny (in place of {args.backbone})" if args.tiny else args.backbone
    print(f"# {datetime.date.today()}  {name}  torch {torch.__version__}  {label}  "
          f"{args.height}x{args.width}x{args.frames}  N={args.steps} K={args.k}  guidance "
          f"{args.guidance}  {args.dtype} (VAE {vae_dtype})  {decoded}"
          f"{'  VAE blocks checkpointed' if args.vae_checkpointing else ''}  LoRA params "
          f"{sum(p.numel() for p in lora):,}  built in {built:.1f} s{stand_in}")
    try:
        flops = warm_up(backbone, reward, optimizer, args)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.repeat):
            times.append(one_step(backbone, reward, optimizer, args, seed=i + 1))
            print(f"step {i + 1}: {times[-1]:.2f} s", flush=True)
    except torch.cuda.OutOfMemoryError:  # status 3: benchmarks/gpu_dit.sh then tries less memory
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        print(f"out of GPU memory in a training step: peak allocated "
              f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB of {total:.2f} GiB")
        raise SystemExit(3)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    sampled = [sample_only(backbone, args, seed=i + 1) for i in range(args.repeat)]
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
    rollout_vps = rollout_rate(backbone, args) if args.rollout_videos else None
    if rollout_vps is not None:
        print(f"GRPO rollout: {rollout_vps:.3f} videos/s ({args.rollout_videos} videos a batch, eta 1)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": str(datetime.date.today()), "device": name, "args": {k: str(v) for k, v in vars(args).items()},
            "built_seconds": built, "step_seconds": times, "sample_seconds": sampled,
            "peak_gpu_gib": peak_gib,
            "host_max_rss_gib": host_gib, "tflop_per_step": flops / 1e12,
            "achieved_tflops": achieved, "peak_tflops": peak_tflops,
            "rollout_videos_per_second": rollout_vps, "tiny": args.tiny}, indent=2))


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


def rollout_rate(backbone, args) -> float:
    """Videos per second of GRPO's rollout (no gradients, every step recorded), after one untimed
    batch; the best of `--repeat` batches."""
    from vader.sampling.stochastic import rollout

    device, n = backbone.device, args.rollout_videos
    seeds = list(range(n))
    noise = make_noise(backbone.latent_shape(n, args.frames, args.height, args.width), seeds, device)
    times = []
    for i in range(args.repeat + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            rollout(backbone, backbone.trainable_module(), ["a dog riding a bike"] * n, noise,
                    num_inference_steps=args.steps, guidance_scale=args.guidance, eta=1.0, step_seeds=seeds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return n / min(times)


def warm_up(backbone, reward, optimizer, args) -> float:
    """The untimed first step (kernels, allocator, autotuning), its FLOPs counted on the way."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        one_step(backbone, reward, optimizer, args, seed=0)
    return float(counter.get_total_flops())


if __name__ == "__main__":
    main()
