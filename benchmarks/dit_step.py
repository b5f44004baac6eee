"""Seconds per reward-gradient training step and per video sampled without gradients, by our
sampler and by diffusers' own pipeline, for the diffusion transformers (Wan, CogVideoX) on their
tiny random builds (tests/tiny_wan.py, tests/tiny_cogvideox.py, written to a temporary folder).

    python -m benchmarks.dit_step                                  # both, 9x32x32, T=4, guidance 5
    python -m benchmarks.dit_step --backbones wan --rounds 9 --checkpoint-blocks
    python -m benchmarks.dit_step --frames 17 --size 32x64 --json outputs/dit_step.json

Timed per backbone, each a whole video of batch 1 from the same noise (`make_noise`, seed 0):
  train          one reward-gradient step: T-1 steps without a graph, the last (K=1) with
                 gradients (each transformer block checkpointed, the backbones' default),
                 decode of every frame (checkpointed), a stand-in loss frames.mean(), backward,
                 AdamW on the LoRA parameters (no clipping, no reward model).
  ours           our sampler under no_grad, all T steps, then `backbone.decode`.
  ours_cached    the same with the backbone's per-prompt embedding cache on (its default, 256).
  diffusers      `WanPipeline` / `CogVideoXPipeline` `.from_pretrained(folder)` with the
                 backbone's transformer (LoRA layers included), VAE and text encoder passed in,
                 so both sides run the same modules; the checkpoint's own tokenizer and
                 scheduler; `output_type="pt"`.
  train_whole    (`--checkpoint-blocks`) the training step of a second copy loaded with
                 checkpoint_blocks=False: the sampler checkpoints the whole network call of the
                 step with gradients instead of each transformer block.
The pipelines encode the prompt and the empty negative prompt on every call, so `train` and
`ours` run with `prompt_cache_size=0` (they encode both too) and the ratio to diffusers compares
like with like; `ours_cached` shows what the cache saves on top. Guidance: WanPipeline makes two
transformer calls per step, CogVideoXPipeline one on the doubled batch; our sampler makes one on
the doubled batch for both unless `--no-batch-cfg`.

As `benchmarks/step_vs_sample.py` does (its helpers are used here): after one warm-up call of
each, `--rounds` rounds run them back to back in a rotating order, the ratios are taken within
each round, and the table gives their median and range.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from benchmarks.grpo_cost import sync
from benchmarks.step_vs_sample import interleaved, ratio

PROMPT = "a red balloon moves left on white background"  # words the tiny tokenizer knows
# For each timed thing, the one it is compared with in the table (ratio within each round).
AGAINST = {"train": "ours", "ours": "diffusers", "ours_cached": "diffusers", "diffusers": None,
           "train_whole": "train"}


def build(name: str, root: Path, checkpoint_blocks: bool = True):
    """(backbone, pipeline class, folder) for the tiny build, written under `root` once."""
    from backbones.cogvideox import cogvideox
    from backbones.wan import wan

    folder = root / name
    if name == "wan":
        from diffusers import WanPipeline

        from tests.tiny_wan import write_wan

        if not folder.exists():
            write_wan(folder)
        load = partial(wan, str(folder), transformer_dtype="fp32", text_encoder_dtype="fp32",
                       max_sequence_length=16)
        pipeline = WanPipeline
    else:
        from diffusers import CogVideoXPipeline

        from tests.tiny_cogvideox import write_cogvideox

        if not folder.exists():
            write_cogvideox(folder)
        load = partial(cogvideox, str(folder), transformer_dtype="fp32", vae_dtype="fp32",
                       text_encoder_dtype="fp32")
        pipeline = CogVideoXPipeline
    torch.manual_seed(0)  # the LoRA's random initialisation
    # The text encoder stays on the device with the rest, as it does in the pipeline.
    backbone = load(checkpoint_blocks=checkpoint_blocks, prompt_cache_size=0, text_encoder_offload=False)
    return backbone, pipeline, folder


def timers(name: str, root: Path, args: argparse.Namespace, device: torch.device) -> tuple[dict, dict]:
    from vader.sampling.differentiable import make_noise, sample

    backbone, pipeline, folder = build(name, root)
    backbone.to(device)
    model = backbone.trainable_module()
    frames, (height, width), steps, guidance = args.frames, args.size, args.steps, args.guidance
    shape = backbone.latent_shape(1, frames, height, width)
    pipe = pipeline.from_pretrained(folder, transformer=backbone.transformer, vae=backbone.vae,
                                    text_encoder=backbone.text_encoder)
    pipe.set_progress_bar_config(disable=True)

    def noise() -> torch.Tensor:
        return make_noise(shape, [0], device)

    def train_step(bb) -> Callable[[], None]:
        params = [p for p in bb.trainable_module().parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def train() -> None:
            opt.zero_grad(set_to_none=True)
            latents = sample(bb, bb.trainable_module(), [PROMPT], noise(), num_inference_steps=steps,
                             guidance_scale=guidance, cutoff=steps - 1, batch_cfg=args.batch_cfg)
            bb.decode(latents).mean().backward()  # a stand-in reward: any differentiable loss
            opt.step()
            sync()
        return train

    @torch.no_grad()
    def ours() -> None:
        latents = sample(backbone, model, [PROMPT], noise(), num_inference_steps=steps,
                         guidance_scale=guidance, batch_cfg=args.batch_cfg)
        backbone.decode(latents)
        sync()

    def ours_cached() -> None:
        # The loaders' default size. The cache keeps its prompts in between (the warm-up call
        # filled it), while at size 0 `encode_prompts` neither reads nor fills it.
        backbone.prompt_cache_size = 256
        try:
            ours()
        finally:
            backbone.prompt_cache_size = 0

    @torch.no_grad()
    def diffusers() -> None:
        z = noise()  # CogVideoXPipeline's latents are (B, T, C, h, w)
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
             num_frames=frames, latents=z.permute(0, 2, 1, 3, 4) if name == "cogvideox" else z,
             max_sequence_length=16, output_type="pt")
        sync()

    fns = {"train": train_step(backbone), "ours": ours, "ours_cached": ours_cached,
           "diffusers": diffusers}
    if args.checkpoint_blocks:
        whole, _, _ = build(name, root, checkpoint_blocks=False)
        fns["train_whole"] = train_step(whole.to(device))
    info = {"latent_shape": list(shape),
            "lora_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return fns, info


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    with tempfile.TemporaryDirectory(prefix="vader-dit-step-") as root:
        for name in args.backbones:
            fns, info = timers(name, Path(root), args, device)
            # A full collection scans every object torch, diffusers and transformers hold: about
            # 0.2 s here, when a call takes 0.03-0.1 s. Frozen objects are left out of it.
            gc.collect()
            gc.freeze()
            seconds = interleaved(fns, tuple(fns), args.rounds)
            results[name] = {**info, "seconds": seconds,
                             "ratios": {f"{a}/{b}": ratio(seconds, a, b)
                                        for a, b in AGAINST.items() if b and a in seconds}}
    return results


def table(results: dict) -> list[str]:
    lines = [f"{'backbone':<10} {'timed':<12} {'median s':>9} {'min s':>7} {'max s':>7}   "
             f"ratio: median of rounds (range)"]
    for name, r in results.items():
        for timed, s in r["seconds"].items():
            key = f"{timed}/{AGAINST[timed]}" if AGAINST[timed] else None
            cell = ""
            if key in r["ratios"]:
                q = r["ratios"][key]
                cell = f"{key} {q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})"
            lines.append(f"{name:<10} {timed:<12} {statistics.median(s):>9.3f} {min(s):>7.3f} "
                         f"{max(s):>7.3f}   {cell}".rstrip())
    return lines


def size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="+", choices=["wan", "cogvideox"], default=["wan", "cogvideox"])
    ap.add_argument("--frames", type=int, default=9, help="video frames: 4k+1 (Wan), 8k+1 (CogVideoX)")
    ap.add_argument("--size", type=size, default=(32, 32), help="HxW (or one number for a square)")
    ap.add_argument("--steps", type=int, default=4, help="num_inference_steps T (K=1 in the step)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-cfg", action=argparse.BooleanOptionalAction, default=True,
                    help="our sampler's guidance as one call on a doubled batch (the default) or two")
    ap.add_argument("--checkpoint-blocks", action="store_true",
                    help="also time the step with whole-step instead of per-block checkpointing")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds measured")
    # One thread by default: the tiny builds' operations take microseconds, too little to split
    # (2 threads: medians within 10% of 1 on the 2-core CPU), and a second thread waiting for a
    # core another process holds stalls every operation (single calls up to 20x slower).
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args()

    results = measure(args)
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"device {device} ({args.threads} threads)")
    print(f"# tiny random builds, fp32, video {args.frames}x{args.size[0]}x{args.size[1]}, batch 1, "
          f"T={args.steps}, K=1, guidance {args.guidance}, batch_cfg {args.batch_cfg}, "
          f"{args.rounds} interleaved rounds; " + ", ".join(
              f"{n}: latents {tuple(r['latent_shape'])}, LoRA {r['lora_parameters']:,} parameters"
              for n, r in results.items()))
    print("\n".join(table(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": datetime.datetime.now().isoformat(),
                                         "torch": torch.__version__, "device": device,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
