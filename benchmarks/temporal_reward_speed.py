"""Seconds per video of the temporal rewards (issue 17), on this machine: the optical flow once
(shared by every flow reward in a step), then each reward's own work on top of the cached flow.

    python -m benchmarks.temporal_reward_speed                       # 16 frames, 256 x 256, CPU
    python -m benchmarks.temporal_reward_speed --flows farneback raft_small --videos 2 --device cuda

RAFT and LPIPS' AlexNet run with random weights (`random`): the published ones cannot be
downloaded where this project is built, and their cost does not depend on the weights' values.
identity_lock is left out (it needs DINOv2's weights). Frames are random; the flow networks'
cost does not depend on the picture (Farneback's barely does). Every number printed is measured
by this run; docs/performance.md records one with its date and machine.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rewards.dynamic_degree import DynamicDegree  # noqa: E402
from rewards.flow import flow_estimator, pair_flows  # noqa: E402
from rewards.flow_smoothness import FlowSmoothness  # noqa: E402
from rewards.loop_break import LoopBreak  # noqa: E402
from rewards.seam import Seam  # noqa: E402
from rewards.structure_constancy import StructureConstancy  # noqa: E402
from rewards.t_lpips import TemporalLPIPS  # noqa: E402


def rewards_for(flow: str, updates: int) -> dict[str, object]:
    common = {"flow": flow, "flow_weights": "random", "num_flow_updates": updates}
    return {"t_lpips": TemporalLPIPS(net_weights="random", **common),
            "structure_constancy": StructureConstancy(**common),
            "flow_smoothness": FlowSmoothness(**common),
            "dynamic_degree": DynamicDegree(**common),
            "seam (window 8, overlap 2)": Seam(window=8, overlap=2, **common)}


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", nargs="+", default=["farneback", "raft_small", "raft_large"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--videos", type=int, default=1)
    parser.add_argument("--updates", type=int, default=12, help="RAFT refinement iterations")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.videos} video(s) of {args.frames} frames at {args.size} x {args.size}; seconds per video")
    torch.manual_seed(0)
    frames = torch.rand(args.videos, args.frames, 3, args.size, args.size, device=args.device)
    for flow in args.flows:
        estimator = flow_estimator(flow, "random", args.updates)  # the rewards' own; RAFT follows the frames
        rewards = rewards_for(flow, args.updates)
        video = frames.clone()
        pair_flows(frames[:, :2].clone(), estimator)  # warm-up: first-call allocations
        flow_s = timed(lambda: pair_flows(video, estimator), args.device) / args.videos
        print(f"{flow}: flow of {args.frames - 1} pairs, both directions: {flow_s:.3f}")
        for name, reward in rewards.items():
            own = timed(lambda: reward(video, ["a prompt"] * args.videos), args.device) / args.videos
            print(f"  {name:28s} {own:.3f} on top of the flow, {flow_s + own:.3f} alone")
    loop = LoopBreak()
    print(f"loop_break (no flow): {timed(lambda: loop(frames, ['a prompt'] * args.videos), args.device) / args.videos:.3f}")


if __name__ == "__main__":
    main()
