"""Seconds per video of the temporal rewards (issue 17), on this machine.

    python -m benchmarks.temporal_reward_speed                       # 16 frames, 256 x 256, CPU
    python -m benchmarks.temporal_reward_speed --backward --repeats 3   # also forward + backward
    python -m benchmarks.temporal_reward_speed --only clip_vid framing --device cuda
    python -m benchmarks.temporal_reward_speed --flows farneback --videos 2 --frames 8 --size 128

What is measured, per video (the time for `--videos` videos divided by their number), as the
median of `--repeats` timed calls after one untimed warm-up call of the same kind:
- the flow rewards: the optical flow of every consecutive pair, both directions, once (shared by
  every flow reward in a step), then each reward's own work on top of the cached flow;
- every other reward (the table): the reward's call on the `--frames` frames, preprocessing
  included; the rewards that score a few frames (identity_lock and caption_consistency 4,
  clip_vid 8) pick them inside the call, as in training, where only those are decoded.
"forward" runs under torch.no_grad (GRPO, evaluation); "fwd+bwd" (`--backward`) is the forward
with the graph and the backward of the scores' sum to the frames (reward backpropagation): the
models are frozen, so their weights get no gradient. Rewards without a gradient say so.

Every model has its published architecture and size but random weights (benchmarks/
random_models.py builds them from their transformers configs and saves them, once per run, in a
temporary folder with the processor files the rewards read; the table names them): the published
weights cannot be downloaded where this project is built, and a network's cost does not depend
on its weights' values. Tokenizers are built in memory (BERT's at its real size, CLIP's
byte-level: its prompt tokens cost under 1% of these models; random_models.py says more). RAFT
and LPIPS' AlexNet run with random weights too (`random`). One cost does depend on the weights:
how many tokens BLIP writes before its end token, which a random BLIP may write at any step. So
every caption is forced to `max_new_tokens` (20, the reward's default and BLIP's COCO setting;
`min_new_tokens` on the loaded model, checked before timing): an upper bound, since real captions
often end sooner (COCO-style captions run to about 10 words). Frames are random; the networks'
cost does not depend on the picture (Farneback's barely does). The image models resize frames to
their own input (224; BLIP 384), so `--size` changes only the preprocessing, the flow and the
weight-free rewards. imaging_quality (MUSIQ, through the optional pyiqa) is not timed. Every
number printed is measured by this run; docs/performance.md records one with its date and machine.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.random_models import PROMPT, RandomModels  # noqa: E402
from rewards import clip_hf, video_models  # noqa: E402
from rewards.aesthetic_quality import AestheticQuality  # noqa: E402
from rewards.background_consistency import BackgroundConsistency  # noqa: E402
from rewards.caption_consistency import CaptionConsistency  # noqa: E402
from rewards.clip_vid import ClipVid  # noqa: E402
from rewards.dynamic_degree import DynamicDegree  # noqa: E402
from rewards.flow import flow_estimator, pair_flows  # noqa: E402
from rewards.flow_smoothness import FlowSmoothness  # noqa: E402
from rewards.framing import Framing  # noqa: E402
from rewards.identity_lock import IdentityLock  # noqa: E402
from rewards.loop_break import LoopBreak  # noqa: E402
from rewards.novelty_after_k import NoveltyAfterK  # noqa: E402
from rewards.seam import Seam  # noqa: E402
from rewards.structure_constancy import StructureConstancy  # noqa: E402
from rewards.subject_consistency import SubjectConsistency  # noqa: E402
from rewards.t_lpips import TemporalLPIPS  # noqa: E402
from rewards.temporal_flickering import TemporalFlickering  # noqa: E402

FLOW_REWARDS = ("t_lpips", "structure_constancy", "flow_smoothness", "dynamic_degree", "seam")
OTHER_REWARDS = ("identity_lock", "framing", "novelty_after_k", "caption_consistency", "clip_vid",
                 "subject_consistency", "background_consistency", "temporal_flickering",
                 "aesthetic_quality", "loop_break")


def seam_window(frames: int) -> tuple[int, int]:
    """Windows of half the clip overlapping by 2 (8 and 2 at 16 frames), so short clips have a seam."""
    window = max(2, frames // 2)
    return window, min(2, window // 4)


def flow_rewards(flow: str, updates: int, frames: int) -> dict[str, object]:
    common = {"flow": flow, "flow_weights": "random", "num_flow_updates": updates}
    window, overlap = seam_window(frames)
    return {"t_lpips": TemporalLPIPS(net_weights="random", **common),
            "structure_constancy": StructureConstancy(**common),
            "flow_smoothness": FlowSmoothness(**common),
            "dynamic_degree": DynamicDegree(**common),
            "seam": Seam(window=window, overlap=overlap, **common)}


def full_length_captions(reward: CaptionConsistency) -> CaptionConsistency:
    """Every caption max_new_tokens long: the end token is barred until then (see the docstring)."""
    reward.captioner.text_decoder.generation_config.min_new_tokens = reward.max_new_tokens
    return reward


def caption_tokens(reward: CaptionConsistency) -> int:
    """Tokens BLIP writes per caption as the reward asks it (checks that full_length_captions took)."""
    side = reward.captioner.config.vision_config.image_size
    weights = next(reward.captioner.parameters())
    with torch.no_grad():
        tokens = reward.captioner.generate(
            pixel_values=torch.rand(1, 3, side, side, device=weights.device, dtype=weights.dtype),
            max_new_tokens=reward.max_new_tokens, do_sample=False, num_beams=1)
    return tokens.shape[1] - 1  # after BLIP's [DEC]


def other_rewards(models: RandomModels) -> list[tuple[str, str, tuple[str, ...], Callable[[], object]]]:
    """(reward_fn name, table label, random models it loads, builder), in the issue's order."""
    dinov2 = ("dinov2-small",)
    return [
        ("identity_lock", "identity_lock (4 keyframes)", dinov2,
         lambda: IdentityLock(pretrained=models("dinov2-small"))),
        ("framing", "framing (dino localiser)", dinov2, lambda: Framing(pretrained=models("dinov2-small"))),
        ("framing", "framing (saliency localiser)", (), lambda: Framing(localiser="saliency")),
        ("novelty_after_k", "novelty_after_k", dinov2, lambda: NoveltyAfterK(pretrained=models("dinov2-small"))),
        ("caption_consistency", "caption_consistency (4 captions of 20 tokens)", ("blip-base", "minilm-l6"),
         lambda: full_length_captions(CaptionConsistency(pretrained=models("blip-base"),
                                                         sentence_model=models("minilm-l6")))),
        ("clip_vid", "clip_vid (8 frames)", ("clip-vit-l14",), lambda: ClipVid(pretrained=models("clip-vit-l14"))),
        ("subject_consistency", "subject_consistency", ("dino-vitb16",),
         lambda: SubjectConsistency(pretrained=models("dino-vitb16"))),
        ("background_consistency", "background_consistency", ("clip-vit-b32",),
         lambda: BackgroundConsistency(pretrained=models("clip-vit-b32"))),
        ("temporal_flickering", "temporal_flickering", (), TemporalFlickering),
        ("aesthetic_quality", "aesthetic_quality", ("clip-vit-l14", "vbench-aesthetic-head"),
         lambda: AestheticQuality(pretrained=models("clip-vit-l14"), head_repo=models("vbench-aesthetic-head"))),
        ("loop_break", "loop_break", (), LoopBreak),
    ]


def forget_loaded_models() -> None:
    """Each reward loads its models afresh, as if alone in its process: the per-process caches
    would share DINOv2 between identity_lock, framing and novelty_after_k (and framing switches
    it to eager attention), and hold every model in memory until the end."""
    video_models._CACHE.clear()
    clip_hf._CACHE.clear()
    gc.collect()


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], args: argparse.Namespace) -> float:
    """Per video: one warm-up call (first-call allocations, kernels, models moving to the device),
    then the median of `--repeats` timed calls, over `--videos`."""
    fn()
    return statistics.median(timed(fn, args.device) for _ in range(args.repeats)) / args.videos


def forward_seconds(reward, video: torch.Tensor, prompts: list[str], args) -> float:
    def forward() -> None:
        with torch.no_grad():
            reward(video, prompts)
    return median_seconds(forward, args)


def backward_seconds(reward, leaf: torch.Tensor, prompts: list[str], args) -> float:
    """Forward with the graph and backward of the scores' sum to `leaf`, a frames tensor requiring grad."""
    def step() -> None:
        leaf.grad = None
        reward(leaf, prompts)[0].sum().backward()
    return median_seconds(step, args)


def time_flow_rewards(frames: torch.Tensor, prompts: list[str], names: list[str], args) -> None:
    """The flow once (fresh tensors: pair_flows caches the last one it saw), then each reward on
    top of the cached flow; the forward timings first, then fwd+bwd (a new tensor, a new flow)."""
    window, overlap = seam_window(args.frames)
    for flow in args.flows:
        estimator = flow_estimator(flow, "random", args.updates)  # the rewards' own; RAFT follows the frames
        rewards = {n: r for n, r in flow_rewards(flow, args.updates, args.frames).items() if n in names}
        flow_s = median_seconds(lambda: pair_flows(frames.clone(), estimator), args)
        print(f"{flow}: flow of {args.frames - 1} pairs, both directions: {flow_s:.3f}", flush=True)
        video = frames.clone()
        pair_flows(video, estimator)
        own = {n: forward_seconds(r, video, prompts, args) for n, r in rewards.items()}
        both: dict[str, float] = {}
        if args.backward:
            leaf = frames.clone().requires_grad_(True)
            pair_flows(leaf, estimator)
            both = {n: backward_seconds(r, leaf, prompts, args) for n, r in rewards.items()
                    if r.differentiable}
        for name in rewards:
            label = f"seam (window {window}, overlap {overlap})" if name == "seam" else name
            line = f"  {label:28s} {own[name]:.3f} on top of the flow, {flow_s + own[name]:.3f} alone"
            if args.backward:
                line += (f"; fwd+bwd {both[name]:.3f} on top, {flow_s + both[name]:.3f} alone"
                         if name in both else "; no gradient")
            print(line, flush=True)


def time_other_rewards(frames: torch.Tensor, prompts: list[str], names: list[str], args) -> None:
    with tempfile.TemporaryDirectory(prefix="random-reward-models-") as root:
        models = RandomModels(root)
        table = []
        for name, label, needs, build in other_rewards(models):
            if name not in names:
                continue
            forget_loaded_models()
            for key in needs:
                if key not in models.built:
                    models(key)
                    print(f"built {models.label(key)} with random weights in {models.built[key][2]:.1f} s", flush=True)
            reward = build()
            if name == "caption_consistency" and caption_tokens(reward) != reward.max_new_tokens:
                raise RuntimeError("BLIP's captions were not forced to max_new_tokens: timings would vary")
            forward = forward_seconds(reward, frames, prompts, args)
            if not reward.differentiable:
                both = "no gradient"
            elif args.backward:
                both = f"{backward_seconds(reward, frames.clone().requires_grad_(True), prompts, args):.3f}"
            else:
                both = "not timed (--backward)"
            model = " + ".join(models.label(k) for k in needs) or "none (weight-free)"
            table.append(f"| {label} | {model} | {forward:.3f} | {both} |")
            print(f"  {label}: forward {forward:.3f}, fwd+bwd {both}", flush=True)
            del reward
        forget_loaded_models()
    print("\n| reward | model (published size, random weights) | s/video forward | s/video fwd+bwd |")
    print("| --- | --- | --- | --- |")
    print("\n".join(table))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", nargs="+", default=["farneback", "raft_small", "raft_large"])
    parser.add_argument("--only", nargs="+", choices=FLOW_REWARDS + OTHER_REWARDS, metavar="REWARD",
                        help=f"time only these rewards (default: all): {', '.join(FLOW_REWARDS + OTHER_REWARDS)}")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up; the median is printed")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward to the frames")
    parser.add_argument("--updates", type=int, default=12, help="RAFT refinement iterations")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    names = args.only or list(FLOW_REWARDS + OTHER_REWARDS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.videos} video(s) of {args.frames} frames at {args.size} x {args.size}, median of "
          f"{args.repeats} after a warm-up; seconds per video", flush=True)
    start = time.perf_counter()
    torch.manual_seed(0)
    frames = torch.rand(args.videos, args.frames, 3, args.size, args.size, device=args.device)
    prompts = [PROMPT] * args.videos
    if any(n in FLOW_REWARDS for n in names):
        time_flow_rewards(frames, prompts, names, args)
    if any(n in OTHER_REWARDS for n in names):
        time_other_rewards(frames, prompts, names, args)
    print(f"\nwhole run (models built, loaded, warmed up and timed): {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
