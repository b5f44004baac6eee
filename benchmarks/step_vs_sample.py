"""Seconds per training step against seconds per sampled video with gradients off, for our
sampler and for diffusers' TextToVideoSDPipeline on the same components and settings.

    python -m benchmarks.step_vs_sample                           # tiny backbone, T=25, K=1, CFG
    python -m benchmarks.step_vs_sample --repeats 15 --json outputs/step_vs_sample.json
    python -m benchmarks.step_vs_sample --lora-targets linear --threads 1
    python -m benchmarks.step_vs_sample --threads 1 --only train --repeats 30   # the step alone

Three things are timed, each a whole video of `--frames` x `--height` x `--width`:
  train      one optimizer step as `Trainer.train_step` runs it: T-K steps without a graph,
             K with gradients (checkpointed), decode of the frames the reward scores, the reward,
             backward, gradient clipping, AdamW.
  ours       our sampler under no_grad, all T steps, plus decoding every frame.
  diffusers  `TextToVideoSDPipeline(...)(latents=the same noise, output_type="pt")` built from
             the very same UNet (LoRA layers included), VAE, text encoder, tokenizer and scheduler.
After one warm-up of each, `--repeats` rounds run the three back to back, in a rotating order,
so slow drift of the machine (other processes, clocks) hits all three alike; the ratios are
taken within each round and their median and range reported. Prints a table; `--json` writes it.
It also counts, in one more training step, what timing on a shared or noisy machine cannot
resolve: text-encoder calls, and reads of a tensor's value by the project's code (`.item()`,
`float(t)`, `.tolist()`, ...), each of which waits for the device on a GPU.

The arithmetic floor of train/ours at T=25, K=1 with checkpointing is about 1.12-1.16: one
extra forward to recompute the last step and about two forwards for its backward, against 25
guided steps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TIMED = ("train", "ours", "diffusers")


def build(args: argparse.Namespace):
    from hydra import compose, initialize_config_dir

    from vader.build import build_trainer
    from vader.config import CONF_DIR, register_configs

    register_configs()
    overrides = [f"num_inference_steps={args.steps}", f"backprop_steps={args.k}",
                 f"guidance_scale={args.guidance}", f"num_frames={args.frames}",
                 f"height={args.height}", f"width={args.width}", "train_batch_size=1",
                 f"reward_fn={args.reward}", "run_name=bench", "logger=none"]
    overrides += args.override
    if args.lora_targets == "linear":  # every Linear layer of the UNet's attention blocks too
        overrides.append("lora_target_modules=[to_q,to_k,to_v,to_out.0,proj_in,proj_out,"
                         "ff.net.0.proj,ff.net.2,time_emb_proj]")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    trainer = build_trainer(cfg, tempfile.mkdtemp(prefix="vader-bench-"))
    trainer.setup()
    return trainer


def diffusers_pipeline(backbone):
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline(vae=backbone.vae, text_encoder=backbone.text_encoder,
                                 tokenizer=backbone.tokenizer, unet=backbone.unet,
                                 scheduler=backbone.make_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timers(trainer, args):
    from vader.sampling.differentiable import make_noise, sample

    backbone, cfg = trainer.backbone, trainer.cfg
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompt = trainer.prompts.train[0]
    pipe = diffusers_pipeline(backbone)
    shape = backbone.latent_shape(1, cfg.num_frames, cfg.height, cfg.width)

    def train() -> None:
        trainer.train_step()

    @torch.no_grad()
    def ours() -> None:
        noise = make_noise(shape, [0])
        latents = sample(backbone, model, [prompt], noise, num_inference_steps=args.steps,
                         guidance_scale=args.guidance)
        backbone.decode(latents)

    @torch.no_grad()
    def theirs() -> None:
        pipe.scheduler = backbone.make_scheduler()
        pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
             height=cfg.height, width=cfg.width, num_frames=cfg.num_frames,
             latents=make_noise(shape, [0]), output_type="pt")

    return {"train": train, "ours": ours, "diffusers": theirs}


def count_step(trainer) -> dict[str, int]:
    """Text-encoder calls and host reads by the project's code (not torch's or diffusers') in
    one training step."""
    root = Path(__file__).resolve().parents[1]
    installed = Path(sys.prefix).resolve()  # a venv inside the checkout is not our code
    counts = {"text_encoder_calls": 0, "host_reads": 0}
    hook = trainer.backbone.text_encoder.register_forward_pre_hook(
        lambda *_: counts.__setitem__("text_encoder_calls", counts["text_encoder_calls"] + 1))
    real = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__float__",
                                                           "__int__", "__bool__")}

    def wrap(method):
        def counted(self, *args, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if caller.is_relative_to(root) and not caller.is_relative_to(installed):
                counts["host_reads"] += 1
            return method(self, *args, **kwargs)
        return counted

    try:
        for name, method in real.items():
            setattr(torch.Tensor, name, wrap(method))
        trainer.train_step()
    finally:
        for name, method in real.items():
            setattr(torch.Tensor, name, method)
        hook.remove()
    return counts


def interleaved(fns: dict, timed: tuple[str, ...], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of `fns[timed]`, after one warm-up call each, in `repeats` rounds that run
    them back to back in a rotating order, so drift of the machine hits all alike."""
    for name in timed:  # warm-up: lazy inits, allocator pools, first-call kernel choices
        fns[name]()
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(repeats):
        order = timed[r % len(timed):] + timed[:r % len(timed)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def ratio(seconds: dict[str, list[float]], a: str, b: str) -> dict:
    """a/b within each round: median, min and max."""
    per_round = [x / y for x, y in zip(seconds[a], seconds[b])]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    trainer = build(args)
    fns = timers(trainer, args)
    seconds = interleaved(fns, tuple(args.only or TIMED), args.repeats)
    lora = sum(p.numel() for p in trainer.params)
    return {"seconds": seconds, "lora_parameters": lora, "per_step": count_step(trainer)}


def summarise(seconds: dict[str, list[float]]) -> dict:
    pairs = [(a, b) for a, b in (("train", "ours"), ("ours", "diffusers"), ("train", "diffusers"))
             if a in seconds and b in seconds]
    return {"median_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            **{f"{a}/{b}": ratio(seconds, a, b) for a, b in pairs}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25, help="num_inference_steps T")
    ap.add_argument("--k", type=int, default=1, help="backprop_steps K")
    ap.add_argument("--guidance", type=float, default=7.5, help="CFG scale (>1: two passes per step)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--reward", default="colorfulness", help="a weight-free reward_fn option")
    ap.add_argument("--lora-targets", choices=["attention", "linear"], default="attention",
                    help="LoRA on the attention projections (default) or on every linear layer "
                         "(projections, feed-forward, time embedding)")
    ap.add_argument("--override", nargs="*", default=[],
                    help="more config overrides, e.g. backbone.checkpoint_blocks=true batch_cfg=false")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved rounds measured")
    ap.add_argument("--only", nargs="*", choices=TIMED,
                    help="time only these (e.g. train: the training step alone, so more rounds "
                         "fit; no ratios then)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()

    result = measure(args)
    summary = summarise(result["seconds"])
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"device {device} ({args.threads} threads)")
    print(f"# tiny backbone, video {args.frames}x{args.height}x{args.width}, T={args.steps}, K={args.k}, "
          f"guidance {args.guidance}, reward {args.reward}, LoRA on {args.lora_targets} "
          f"({result['lora_parameters']:,} parameters), {args.repeats} interleaved rounds"
          + (f", overrides {' '.join(args.override)}" if args.override else ""))
    print(f"{'':>10} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, s in result["seconds"].items():
        print(f"{name:>10} {statistics.median(s):>9.3f} {min(s):>7.3f} {max(s):>7.3f}")
    for key in ("train/ours", "ours/diffusers", "train/diffusers"):
        if key in summary:
            r = summary[key]
            print(f"{key:>16}: {r['median']:.3f} (per-round range {r['min']:.3f}-{r['max']:.3f})")
    counts = result["per_step"]
    print(f"per training step: {counts['text_encoder_calls']} text-encoder calls, "
          f"{counts['host_reads']} host reads of tensor values by the project's code")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": datetime.datetime.now().isoformat(),
                                         "torch": torch.__version__, "device": device,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         **result, **summary}, indent=2))


if __name__ == "__main__":
    main()
