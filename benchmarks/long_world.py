"""Long videos on the shapes world (issue 18, must-show 5): does a video 3x the window keep its
prompt's attributes in every window, and how much does its subject drift?

    python -m benchmarks.long_world                         # the shipped world model, 24 frames
    python -m benchmarks.long_world --lora outputs/default/checkpoints/step_000040
    python -m benchmarks.long_world --seeds 1 --dinov2 /models/dinov2-small --json out.json

For each way of making a long video (below), the held-out world prompts (prompt_fn=world, 18) x
`--seeds` evaluation seeds are generated at `--frames` frames, cut into blocks of `--window`
frames (the windows, without overlap), and each block is read by the world's judge
(vader/world/judge.py): per block, the share of videos whose background, colour, shape and motion
are the prompt's. `same object` is the share whose judged colour and shape are the same in every
block (the world's identity: is it still the same red circle at the end?). `identity drift` is
1 - identity_lock (rewards/identity_lock.py, 4 keyframes over the whole video) with the DINOv2 of
`--dinov2`, or, without it, a DINOv2-small architecture with random weights: then it measures
how much the frames' pixel statistics drift, not DINOv2's notion of identity, and the header says
so. `seam` is rewards/seam.py with Farneback flow at the mode's window boundaries.

Modes: `window` (one window of --window frames: the reference), `concat` (windows made
independently and put end to end: overlap 0, no fusion, independent noise), `fused` (overlap
--overlap, triangular fusion, FreeNoise noise), `keyframes` (fused, plus keyframes every
--interval latent frames at guidance 7.5 and in-betweens at 3).
Every number printed is measured by this run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from vader.sampling.differentiable import make_noise, sample  # noqa: E402
from vader.sampling.keyframes import Keyframes  # noqa: E402
from vader.sampling.seeds import EVAL, generator_seed  # noqa: E402
from vader.sampling.windows import Windows, long_noise  # noqa: E402

ATTRIBUTES = ("background", "colour", "shape", "motion")


def modes(args: argparse.Namespace) -> dict[str, dict]:
    fused = Windows(args.window, args.overlap, "triangular")
    return {
        "window": {"frames": args.window, "windows": None, "noise": "plain"},
        "concat": {"frames": args.frames, "windows": Windows(args.window, 0, "none"), "noise": "plain"},
        "fused": {"frames": args.frames, "windows": fused, "noise": "freenoise"},
        "keyframes": {"frames": args.frames, "windows": fused, "noise": "freenoise",
                      "keyframes": Keyframes(args.interval, 7.5, 3.0)},
    }


def random_dinov2(folder: Path) -> str:
    """A DINOv2-small architecture with random weights and DINOv2's preprocessing, written where
    IdentityLock loads from (nothing can be downloaded here)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                             intermediate_size=1536)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return str(folder)


@torch.no_grad()
def videos(backbone, prompts: list[str], seeds: list[int], mode: dict, steps: int,
           batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(prompts), batch):
        p, s = prompts[i:i + batch], seeds[i:i + batch]
        shape = backbone.latent_shape(len(p), mode["frames"], 32, 32)
        noise = long_noise(shape, s, mode["windows"]) if mode["noise"] == "freenoise" else make_noise(shape, s)
        latents = sample(backbone, backbone.trainable_module(), p, noise, num_inference_steps=steps,
                         guidance_scale=7.5, step_seeds=s, windows=mode["windows"],
                         keyframes=mode.get("keyframes"))
        out.append(backbone.decode(latents).float())
    return torch.cat(out)


def measure(frames: torch.Tensor, prompts: list[str], mode: dict, window: int, identity, seam_of) -> dict:
    from vader.world.grammar import parse
    from vader.world.judge import read

    blocks = Windows(window).spans(frames.shape[1])
    wanted = [parse(p) for p in prompts]
    readings = [[read(video[s:e]) for s, e in blocks] for video in frames]
    per_block = {a: [sum(r[b].get(a) == w.get(a) for r, w in zip(readings, wanted)) / len(prompts)
                     for b in range(len(blocks))] for a in ATTRIBUTES}
    same = sum(all((r[b].get("colour"), r[b].get("shape")) == (r[0].get("colour"), r[0].get("shape"))
                   for b in range(len(blocks))) for r in readings) / len(prompts)
    value, _ = identity(frames, prompts)
    row = {"blocks": len(blocks), "per_block": per_block, "same_object": same,
           "identity_drift": 1 - value.mean().item()}
    if mode["windows"] is not None:
        seam = seam_of(mode["windows"])
        row["seam"] = seam(frames, prompts)[0].mean().item()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=24, help="frames of a long video")
    ap.add_argument("--window", type=int, default=8, help="latent frames per window")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--interval", type=int, default=4, help="keyframe interval (keyframes mode)")
    ap.add_argument("--steps", type=int, default=10, help="num_inference_steps")
    ap.add_argument("--seeds", type=int, default=2, help="evaluation seeds per held-out prompt")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--weights", help="a world model folder (default: the shipped one)")
    ap.add_argument("--lora", help="a checkpoint folder or .safetensors to load first")
    ap.add_argument("--dinov2", help="DINOv2 hub id or folder for identity_lock (default: random weights)")
    ap.add_argument("--modes", nargs="+", default=["window", "concat", "fused", "keyframes"])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from backbones.world import world
    from rewards.identity_lock import IdentityLock
    from rewards.seam import Seam
    from vader.data.prompts import world as world_prompts
    from vader.loop import checkpoint as ckpt

    backbone = world(weights=args.weights)
    if args.lora:
        backbone.load_lora_state_dict(ckpt.load_lora(ckpt.resolve_lora_path(args.lora)))
    held = world_prompts("sample").val
    prompts = [p for p in held for _ in range(args.seeds)]
    seeds = [generator_seed(EVAL, s) for _ in held for s in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        dinov2 = args.dinov2 or random_dinov2(Path(tmp))
        identity = IdentityLock(pretrained=dinov2, keyframes=4)
        rows = {}
        for name in args.modes:
            mode = modes(args)[name]
            start = time.perf_counter()
            frames = videos(backbone, prompts, seeds, mode, args.steps, args.batch)
            seam_of = lambda w: Seam(window=w.window, overlap=w.overlap, flow="farneback")  # noqa: E731
            rows[name] = {**measure(frames, prompts, mode, args.window, identity, seam_of),
                          "frames": mode["frames"], "seconds": time.perf_counter() - start}
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  world model "
          f"{args.weights or 'shipped'}{', LoRA ' + args.lora if args.lora else ''}  torch {torch.__version__}")
    print(f"# {len(held)} held-out prompts x {args.seeds} seeds, {args.steps} steps, guidance 7.5, "
          f"window {args.window}, overlap {args.overlap}; identity_lock with "
          f"{args.dinov2 or 'a RANDOM-weight DINOv2-small (pixel-statistics drift, not identity)'}")
    print(f"{'mode':<10} {'frames':>6} {'attribute':<10} " + " ".join(f"{'window ' + str(b + 1):>9}"
          for b in range(max(r['blocks'] for r in rows.values()))))
    for name, r in rows.items():
        for a in ATTRIBUTES:
            print(f"{name:<10} {r['frames']:>6} {a:<10} " + " ".join(f"{v:>9.2f}" for v in r["per_block"][a]))
        seam = f"{r['seam']:.3f}" if "seam" in r else "-"
        print(f"{name:<10} same object {r['same_object']:.2f}  identity drift {r['identity_drift']:.4f}  "
              f"seam {seam}  ({r['seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
