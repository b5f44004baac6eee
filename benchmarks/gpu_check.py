"""The GPU check: real-size random-weight measurements on one GPU, within a time budget, into one
JSON and one markdown table (issue 21, item 5).

    bash benchmarks/gpu_check.sh                     # on a machine with one GPU: outputs/gpu_check/
    python -m benchmarks.gpu_check --tiny            # the same path in seconds on a CPU (tested)

Per setting (bf16, T = 25 sampling steps, K = 1 step with gradients, one video):
`benchmarks/real_size_step.py` measures peak GPU memory, a training step's and a no-grad sample's
seconds and their ratio, the step's FLOP/s and its share of the device's dense bf16 peak, and
GRPO's rollout throughput (videos/s, 2 videos a batch); the meta-device estimate of the same step
(`benchmarks/memory_estimate.py`, `memory_estimate_dit.py`, without their 1.2 margin) stands beside
the measured peak. Settings, in order, each given what is left of the budget:

    modelscope   16x256x256   (the goals below are for this one)
    animatediff  16x512x512
    wan          33x240x416   Wan2.1-T2V-1.3B, every frame decoded for the reward

First, within 2 minutes, FSDP2 through accelerate on the GPU (one process, NCCL): the tiny
backbone trains two steps under configs/accelerate/fsdp.yaml, and its checkpoint resumes for a
third under single_gpu.yaml (the CPU tests run FSDP with two gloo processes; accelerate enables
FSDP only on GPUs).

Goals (issue 21, for the report, not a test): ModelScope 256x256x16 under 12 GB peak with no host
offload (VADER: 12.1 GB GPU + 20.4 GB host); a training step at most 1.2x a no-grad sample; at least
40% of the bf16 peak. A setting that runs out of time or memory is reported as such, never guessed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name, real_size_step arguments, estimate module and its arguments
SETTINGS = {
    "modelscope": (["--backbone", "modelscope", "--frames", "16", "--height", "256", "--width", "256"],
                   "memory_estimate", ["--backbone", "modelscope", "--sizes", "256x256", "--frames", "16",
                                       "--checkpoint", "blocks", "--decoded", "random"]),
    "animatediff": (["--backbone", "animatediff", "--frames", "16", "--height", "512", "--width", "512"],
                    "memory_estimate", ["--backbone", "animatediff", "--sizes", "512x512", "--frames", "16",
                                        "--checkpoint", "blocks", "--decoded", "random"]),
    "wan": (["--backbone", "wan", "--frames", "33", "--height", "240", "--width", "416", "--reward-frames", "all"],
            "memory_estimate_dit", ["--cases", "wan:33x240x416", "--checkpoint", "blocks", "--decoded", "all"]),
}
COMMON = ["--steps", "25", "--k", "1", "--dtype", "bf16", "--repeat", "2", "--rollout-videos", "2"]
# The CPU rehearsal: the tiny backbone through the same script, the estimate of ModelScope at a
# size the meta device traces in seconds.
TINY = {"tiny": (["--tiny", "--frames", "2", "--height", "64", "--width", "64", "--steps", "3", "--k", "1",
                  "--dtype", "fp32", "--repeat", "1", "--rollout-videos", "2"],
                 "memory_estimate", ["--backbone", "modelscope", "--sizes", "64x64", "--frames", "2",
                                     "--checkpoint", "blocks", "--decoded", "random"])}


ROOT = Path(__file__).resolve().parents[1]
# The FSDP check's run: the tiny backbone, seconds on any device.
FSDP_RUN = ["backbone=tiny", "reward_fn=colorfulness", "prompt_fn=builtin", "num_frames=4", "height=16",
            "width=16", "num_inference_steps=3", "num_val_seeds=1", "checkpoint_every=2", "val_every=100"]


def run(cmd: list[str], limit: float, log) -> int:
    """`cmd` under `limit` seconds, its output into `log`; its status (124: out of time)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
    except subprocess.TimeoutExpired:
        log.write(f"stopped after {limit:.0f} s\n")
        return 124


def row(name: str, measured: dict | None, estimate: dict | None, status: int) -> dict:
    out = {"setting": name, "status": {0: "ok", 3: "out of GPU memory", 124: "out of time"}.get(status, f"failed ({status})")}
    if estimate:
        out["estimate_gib"] = estimate["weights_gib"] + estimate["lora_and_adam_gib"] + estimate["activations_gib"]
    if measured:
        # The medians real_size_step prints.
        step, sample = statistics.median(measured["step_seconds"]), statistics.median(measured["sample_seconds"])
        out.update(device=measured["device"], peak_gpu_gib=measured["peak_gpu_gib"], step_seconds=step,
                   sample_seconds=sample, step_over_sample=step / sample, achieved_tflops=measured["achieved_tflops"],
                   share_of_peak=(measured["achieved_tflops"] / measured["peak_tflops"]
                                  if measured.get("peak_tflops") else None),
                   rollout_videos_per_second=measured["rollout_videos_per_second"])
    return out


def fsdp_resume(out: Path, limit: float) -> dict:
    """Two steps under fsdp.yaml, then a third resumed from its checkpoint under single_gpu.yaml,
    both logged to fsdp_resume.log. "ok" needs both runs to finish and the first to have printed
    that FSDP2 ran; on a CPU it cannot (accelerate falls back to one plain process), and the
    status says so."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--dynamo_backend", "no", "--num_processes", "1"]
    first, second = (out / "fsdp").resolve(), (out / "fsdp_resumed").resolve()
    configs, train = ROOT / "configs" / "accelerate", str(ROOT / "train.py")
    start, deadline = time.monotonic(), time.monotonic() + limit
    with (out / "fsdp_resume.log").open("w") as log:
        status = run([*launch, "--config_file", str(configs / "fsdp.yaml"), train, *FSDP_RUN,
                      "num_steps=2", f"hydra.run.dir={first}"], limit, log)
        if status == 0:
            status = run([*launch, "--config_file", str(configs / "single_gpu.yaml"), train, *FSDP_RUN,
                          "num_steps=3", f"resume={first / 'checkpoints' / 'step_000002'}",
                          f"hydra.run.dir={second}"], max(deadline - time.monotonic(), 1), log)
    lines = (out / "fsdp_resume.log").read_text().splitlines()
    engine = next((line.strip() for line in lines if line.startswith("engine: ")), None)
    if status:
        name = "out of time" if status == 124 else f"failed ({status})"
    elif not (second / "checkpoints" / "step_000003").is_dir():
        name = "failed (no step 3)"
    else:
        name = "ok" if engine and engine.startswith("engine: FSDP2") else "not FSDP (no GPU)"
    return {"setting": "fsdp_resume", "status": name, "engine": engine, "seconds": time.monotonic() - start}


def table(rows: list[dict], header: str) -> str:
    def f(value, fmt):
        return "–" if value is None else format(value, fmt)
    lines = [header, "", "| setting | status | peak GPU GiB | estimate GiB | step s | sample s | step/sample | "
             "TFLOP/s | of bf16 peak | GRPO rollout videos/s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["setting"] == "fsdp_resume":
            continue
        lines.append(f"| {r['setting']} | {r['status']} | {f(r.get('peak_gpu_gib'), '.2f')} | "
                     f"{f(r.get('estimate_gib'), '.2f')} | {f(r.get('step_seconds'), '.2f')} | "
                     f"{f(r.get('sample_seconds'), '.2f')} | {f(r.get('step_over_sample'), '.2f')} | "
                     f"{f(r.get('achieved_tflops'), '.1f')} | {f(r.get('share_of_peak'), '.1%')} | "
                     f"{f(r.get('rollout_videos_per_second'), '.2f')} |")
    lines += [f"\nFSDP2 on one process, two steps then resumed without it: {r['status']} ({r['seconds']:.0f} s; "
              f"{r['engine'] or 'no engine line'})" for r in rows if r["setting"] == "fsdp_resume"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for everything (8 minutes less a margin)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--tiny", action="store_true", help="the CPU rehearsal (tiny backbone, small estimate)")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget
    settings = TINY if args.tiny else {k: SETTINGS[k] for k in args.settings}
    args.out.mkdir(parents=True, exist_ok=True)
    # First, and at most 2 minutes: short, and it must not be left without time by the settings.
    rows = [fsdp_resume(args.out, min(120.0, args.budget))]
    print(json.dumps(rows[-1]), flush=True)
    with (args.out / "gpu_check.log").open("w") as log:
        for name, (step_args, estimator, estimate_args) in settings.items():
            step_json, estimate_json = args.out / f"{name}.json", args.out / f"{name}_estimate.json"
            for stale in (step_json, estimate_json):
                stale.unlink(missing_ok=True)
            left = deadline - time.monotonic()
            status = run([sys.executable, "-m", f"benchmarks.{estimator}", *estimate_args, "--json", str(estimate_json)],
                         max(left, 1), log)
            estimate = json.loads(estimate_json.read_text())["rows"][0] if status == 0 else None
            left = deadline - time.monotonic()
            status = run([sys.executable, "-m", "benchmarks.real_size_step", *step_args,
                          *([] if args.tiny else COMMON), "--json", str(step_json)], max(left, 1), log) \
                if left > 20 else 124
            measured = json.loads(step_json.read_text()) if status == 0 else None
            rows.append(row(name, measured, estimate, status))
            print(json.dumps(rows[-1]), flush=True)
    device = next((r["device"] for r in rows if r.get("device")), "no device")
    header = (f"GPU check, {datetime.date.today()}, {device}: bf16, T = 25, K = 1, random weights at real size"
              if not args.tiny else f"GPU check rehearsal (--tiny, CPU), {datetime.date.today()}")
    (args.out / "gpu_check.json").write_text(json.dumps({"date": str(datetime.date.today()), "device": device,
                                                         "tiny": args.tiny, "rows": rows}, indent=2))
    (args.out / "gpu_check.md").write_text(table(rows, header))
    print(table(rows, header))
    # The rehearsal cannot run FSDP (a CPU): its FSDP row passes when both runs finished.
    passed = ("ok", "not FSDP (no GPU)") if args.tiny else ("ok",)
    return 0 if all(r["status"] in passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
