"""Peak memory of one reward-gradient training step versus `num_inference_steps` (N), K, frames,
resolution and the frames decoded.

    python -m benchmarks.memory_vs_steps --steps 5 10 20 40 --k 1
    python -m benchmarks.memory_vs_steps --steps 5 10 20 40 --k 1 2 --json outputs/mem.json
    python -m benchmarks.memory_vs_steps --steps 5 10 20 --no-checkpointing
    python -m benchmarks.memory_vs_steps --steps 10 --frames 4 8 16 --sizes 32x32 64x64
    python -m benchmarks.memory_vs_steps --steps 10 --decoded all 2 random
    python -m benchmarks.memory_vs_steps --steps 10 --frames 8 24 --window 8 --overlap 2 --decoded all random

Every combination of the lists is one row.

One step is what `vader.loop.trainer.Trainer.train_step` does, without accelerate or the optimizer:
sample N steps (the first N-K under no_grad, the last K with gradients), decode, score with
Colorfulness, loss = -reward.mean(), backward. Each (N, K) runs in a fresh process with one
warm-up step before the measured one, so neither allocator caches nor peaks leak between rows.

Columns:
  saved MiB  bytes autograd holds for backward after the forward pass: every tensor passed to a
             `saved_tensors_hooks` pack hook, deduplicated by storage, model weights left out
             (they exist anyway). Tensors saved inside a checkpointed region go to checkpoint's own
             (inner) hook and are recomputed, so they are rightly not counted.
  peak MiB   CUDA: max_memory_allocated during the step minus memory allocated before it.
             CPU: peak RSS during the step (psutil, sampled every ~1 ms) minus RSS before it;
             noisier, and includes the backward pass and any recomputation.
  seconds    wall time of the measured step (forward + backward); on CPU inflated somewhat by
             the per-allocation mmap set below, so compare rows, not with training logs.
The claim to check: at fixed K both memory columns stay flat as N grows, because steps before
the cutoff build no graph. `--no-checkpointing` (sampler and VAE decode, as `gradient_checkpointing`
in conf/train.yaml) should raise them, still flat in N. `--window W --overlap O`: every video is
generated in windows of W latent frames (vader.sampling.windows, as `long.window`/`long.overlap`),
so rows with 3x the frames at the same window show what a long video costs (issue 18).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # run as `python -m benchmarks.memory_vs_steps` here

MiB = 2 ** 20


class RssPeak:
    """Highest resident set size seen by a background thread while the block runs."""

    def __enter__(self):
        try:
            import psutil
            self._rss = psutil.Process().memory_info
        except ImportError:  # fall back to the kernel's high-water mark (blind below the warm-up peak)
            import resource
            self._rss = None
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return self
        self.base = self.peak = self._rss().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self._rss is None:
            import resource
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss().rss)


def measure_one(cfg: dict) -> dict:
    """Runs in the fresh child process: build, warm up, measure one step."""
    torch.set_num_threads(1)  # the machine is shared; also makes CPU timings comparable
    from backbones.tiny import tiny
    from rewards.colorfulness import Colorfulness
    from vader.frames import select_frames
    from vader.sampling.differentiable import cutoff_index, sample
    from vader.sampling.windows import Windows, video_noise

    device = torch.device(cfg["device"])
    n, k, ckpt = cfg["steps"], cfg["k"], not cfg["no_checkpointing"]
    cutoff = cutoff_index("last", n, k)  # raises, naming the fix, if K > N
    backbone = tiny(channels=tuple(cfg["channels"]), gradient_checkpointing=ckpt).to(device)
    model, reward, prompts = backbone.trainable_module(), Colorfulness(), ["a red balloon"]
    windows = Windows(cfg["window"], cfg["overlap"]) if cfg["window"] else None
    decoded = cfg["decoded"] if cfg["decoded"] in ("all", "random") else int(cfg["decoded"])
    shape = backbone.latent_shape(len(prompts), cfg["frames"], cfg["height"], cfg["width"])
    # Weights are saved for backward too, but they are resident anyway: count activations only.
    weights = {t.untyped_storage().data_ptr() for m in (backbone.unet, backbone.vae,
               backbone.text_encoder) for t in [*m.parameters(), *m.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def step(seed: int) -> float:
        for p in model.parameters():
            p.grad = None  # as optimizer.zero_grad(set_to_none=True): grads are allocated in-step
        noise = video_noise(shape, [seed], windows, device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            latents = sample(backbone, model, prompts, noise, num_inference_steps=n,
                             cutoff=cutoff, gradient_checkpointing=ckpt, windows=windows)
            index = select_frames(decoded, cfg["frames"], random.Random(seed))
            values, _ = reward(backbone.decode(latents, index), prompts)
            loss = -values.float().mean()
        saved_now = sum(saved.values())  # before backward frees them
        loss.backward()
        return saved_now

    step(0)  # warm-up: lazy inits, allocator pools, first-call kernel selection
    saved.clear()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with RssPeak() as rss:
        saved_bytes = step(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base if device.type == "cuda"
            else rss.peak - rss.base)
    return {"steps": n, "k": k, "checkpointing": ckpt, "frames": cfg["frames"], "window": cfg["window"],
            "size": f"{cfg['height']}x{cfg['width']}", "decoded": cfg["decoded"], "saved_mib": saved_bytes / MiB,
            "peak_mib": peak / MiB, "peak_kind": "cuda_alloc" if device.type == "cuda" else "rss",
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40], help="num_inference_steps values")
    ap.add_argument("--k", type=int, nargs="+", default=[1], help="backprop_steps (K) values")
    ap.add_argument("--frames", type=int, nargs="+", default=[8], help="frames per video")
    ap.add_argument("--sizes", nargs="+", default=["32x32"], help="HxW resolutions")
    ap.add_argument("--decoded", nargs="+", default=["all"],
                    help="frames decoded and scored: all, random (one), or n (every n-th)")
    ap.add_argument("--window", type=int, default=0, help="latent frames per window (0: the whole video at once)")
    ap.add_argument("--overlap", type=int, default=0, help="latent frames neighbouring windows share")
    ap.add_argument("--no-checkpointing", action="store_true", help="keep all activations of the last K steps")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--backbone", choices=["tiny"], default="tiny", help="only tiny needs no download")
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="tiny UNet block_out_channels")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--_one", help=argparse.SUPPRESS)  # internal: JSON config for one child run
    args = ap.parse_args()

    if args._one:
        print(json.dumps(measure_one(json.loads(args._one))))
        return

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    # Fresh process per row. MALLOC_MMAP_THRESHOLD_ makes glibc mmap (and return on free) every
    # block over 64 KiB, so the warm-up step's freed memory is not reused silently and the RSS
    # delta of the measured step reflects what it really allocates.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    grid = itertools.product(args.k, args.frames, args.sizes, args.decoded, args.steps)
    for k, frames, size, decoded, n in grid:
        height, width = (int(v) for v in size.lower().split("x"))
        cfg = {"steps": n, "k": k, "no_checkpointing": args.no_checkpointing, "device": device,
               "frames": frames, "height": height, "width": width, "decoded": decoded,
               "channels": args.channels, "window": args.window, "overlap": args.overlap}
        out = subprocess.run([sys.executable, "-m", "benchmarks.memory_vs_steps", "--_one",
                              json.dumps(cfg)], env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{cfg} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores, 1 thread)"
    peak_col = "CUDA peak MiB" if device == "cuda" else "peak RSS delta MiB"
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"device {name}")
    print(f"# backbone {args.backbone} channels {args.channels}  batch 1, guidance 7.5 (UNet batch 2)")
    if args.window:
        print(f"# windows of {args.window} latent frames, overlap {args.overlap}, triangular fusion")
    print(f"{'N':>4} {'K':>3} {'frames':>6} {'size':>7} {'decoded':>7} {'ckpt':>5} {'saved MiB':>10} "
          f"{peak_col:>19} {'seconds':>8}")
    for r in rows:
        print(f"{r['steps']:>4} {r['k']:>3} {r['frames']:>6} {r['size']:>7} {r['decoded']:>7} "
              f"{str(r['checkpointing']):>5} {r['saved_mib']:>10.2f} {r['peak_mib']:>19.2f} "
              f"{r['seconds']:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "date": datetime.datetime.now().isoformat(), "args": {
                                             k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
