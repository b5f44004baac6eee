"""Issue 21, items 1 and 3: FSDP2 (configs/accelerate/fsdp.yaml) through accelerate's own FSDP
code on two gloo CPU processes (tests/fsdp_worker.py lifts accelerate's GPU-only gate and nothing
else). It trains the LoRA DDP trains on the same global batch; its checkpoints are the same files
(whole LoRA and optimizer tensors, today's format); a checkpoint resumes across engines, DDP's
under FSDP and FSDP's under DDP, each ending where an uninterrupted DDP run ends; processes with
uneven work stay in step; and GRPO's paths train as under DDP."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.test_distributed import assert_float_order_noise
from tests.test_grpo_runs import ARGS as GRPO_ARGS
from tests.test_sft_dpo_runs import with_a_missing_file
from tests.video_data import write_clip_folder
from vader.loop import checkpoint as ckpt

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--dynamo_backend", "no"]
CONFIGS = ROOT / "configs" / "accelerate"
ARGS = ["backprop_mode=rand", "checkpoint_every=3"]
pytestmark = pytest.mark.slow


def launch(engine: str, out, *overrides: str, timeout: int = 900) -> None:
    config, worker = {"ddp": ("cpu_ddp.yaml", "tests.ddp_worker"),
                      "fsdp": ("fsdp.yaml", "tests.fsdp_worker")}[engine]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # A run that hangs (processes out of step) is stopped as a user would: SIGTERM to the launcher,
    # which stops its workers (each in a session of its own), then SIGKILL to what is left.
    proc = subprocess.Popen([*LAUNCH, "--config_file", str(CONFIGS / config), "--num_processes", "2",
                             "-m", worker, str(out), *ARGS, *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{engine} run still going after {timeout} s: processes out of step?")
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    engines = [json.loads((out / f"engine_rank{r}.json").read_text()) for r in (0, 1)]
    want = {"ddp": {"distributed_type": "MULTI_CPU", "sharded": False},
            "fsdp": {"distributed_type": "FSDP", "sharded": True}}[engine]
    assert engines == [want, want]  # the engine asked for is the one that ran


def step_dir(out, step: int):
    return out / "run" / "checkpoints" / ckpt.step_dir_name(step)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DDP and FSDP, three steps each from the same seed, a checkpoint at step 3."""
    out = {e: tmp_path_factory.mktemp(e) for e in ("ddp", "fsdp")}
    for engine, folder in out.items():
        launch(engine, folder, "num_steps=3", "train_batch_size=1")
    return out


def assert_close_loras(a: dict, b: dict) -> None:
    """The same training up to the order of float sums, which differs between FSDP's
    reduce-scatter over shard groups and DDP's all-reduce over buckets (tests/test_distributed.py
    says how Adam turns that into up to a fraction of a step)."""
    assert all(v.dtype == torch.float32 for v in [*a.values(), *b.values()])
    assert_float_order_noise(a, b)


def test_fsdp_trains_the_lora_ddp_trains_and_writes_the_same_files(runs):
    files = {e: step_dir(d, 3) for e, d in runs.items()}
    assert sorted(p.name for p in files["fsdp"].iterdir()) == sorted(p.name for p in files["ddp"].iterdir())
    loras = {e: load_file(f / ckpt.LORA_FILE) for e, f in files.items()}
    assert_close_loras(loras["fsdp"], loras["ddp"])
    headers = {e: safe_open(f / ckpt.LORA_FILE, "pt").metadata() for e, f in files.items()}
    assert headers["fsdp"] == headers["ddp"]  # the LoRA config diffusers reads, the backbone
    states = {e: ckpt.load_training_state(f) for e, f in files.items()}
    assert states["fsdp"].keys() == states["ddp"].keys()
    opt = {e: s["optimizer"]["state"] for e, s in states.items()}
    assert opt["fsdp"].keys() == opt["ddp"].keys() and opt["fsdp"]
    for i in opt["ddp"]:  # whole Adam moments, not one process's shard
        for name in ("exp_avg", "exp_avg_sq"):
            got, want = opt["fsdp"][i][name], opt["ddp"][i][name]
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_checkpoints_resume_across_engines(runs, tmp_path):
    """DDP's step-3 checkpoint resumed under FSDP, and FSDP's under DDP, both to step 5, end with
    the LoRA of a DDP run that trained 5 steps without stopping (exact resume: optimizer moments,
    schedule and data order came back; a run that lost its moments ends elsewhere)."""
    out = {name: tmp_path / name for name in ("straight", "ddp_to_fsdp", "fsdp_to_ddp")}
    launch("ddp", out["straight"], "num_steps=5", "train_batch_size=1")
    launch("fsdp", out["ddp_to_fsdp"], "num_steps=5", "train_batch_size=1", f"resume={step_dir(runs['ddp'], 3)}")
    launch("ddp", out["fsdp_to_ddp"], "num_steps=5", "train_batch_size=1", f"resume={step_dir(runs['fsdp'], 3)}")
    straight = load_file(step_dir(out["straight"], 5) / ckpt.LORA_FILE)
    at3 = load_file(step_dir(runs["ddp"], 3) / ckpt.LORA_FILE)
    assert any(not torch.equal(straight[k], at3[k]) for k in straight)  # steps 4 and 5 moved it
    for name in ("ddp_to_fsdp", "fsdp_to_ddp"):
        rows = [json.loads(r) for r in (out[name] / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r["split"] == "train"] == [4, 5], name
        assert_close_loras(load_file(step_dir(out[name], 5) / ckpt.LORA_FILE), straight)


def test_processes_with_uneven_micro_batches_stay_in_step(tmp_path):
    """SFT with a missing file: the processes hold different numbers of usable micro-batches, and
    the evaluation has an odd number of videos. Under FSDP every forward pass gathers weights from
    both processes, so the one with fewer micro-batches repeats its last, weightless
    (vader.loop.sharding.largest_count), and the one with no video left makes a stand-in; without
    either the run hangs. It trains the LoRA DDP trains from the same data, and both evaluate the
    same videos."""
    data = with_a_missing_file(write_clip_folder(tmp_path / "clips", ["red", "green", "blue"]), "sft")
    # 3 held-out prompts one at a time: the second round has a video for one process only.
    args = ["algorithm=sft", "dataset=manifest", f"dataset.path={data}", "num_steps=3", "train_batch_size=1",
            "gradient_accumulation_steps=2", "data.num_workers=0", "lr=1e-2",
            "prompt_fn.num_val=3", "val_batch_size=1"]
    for engine in ("ddp", "fsdp"):
        launch(engine, tmp_path / engine, *args, timeout=300)
    rows = [json.loads(r) for r in (tmp_path / "fsdp" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["split"] == "train" and rows[-2]["skipped/missing"] == 3
    assert_close_loras(*(load_file(step_dir(tmp_path / e, 3) / ckpt.LORA_FILE) for e in ("fsdp", "ddp")))
    tables = [list(csv.DictReader((tmp_path / e / "run" / "eval" / "metrics.csv").open())) for e in ("fsdp", "ddp")]
    assert [(r["prompt_index"], r["model"]) for r in tables[0]] == [(r["prompt_index"], r["model"]) for r in tables[1]]
    assert len(tables[0]) == 6  # 3 prompts, base and tuned: no stand-in recorded
    for f, d in zip(*tables):
        assert float(f["reward/colorfulness"]) == pytest.approx(float(d["reward/colorfulness"]), abs=1e-5)


def test_grpo_under_fsdp_trains_what_ddp_trains(tmp_path):
    """GRPO's other paths under FSDP: the stochastic sampler's rollouts, the log-probabilities
    re-evaluated through the sharded module, and the KL reference through it with the LoRA off."""
    for engine in ("ddp", "fsdp"):
        launch(engine, tmp_path / engine, *GRPO_ARGS)
    assert_close_loras(*(load_file(step_dir(tmp_path / e, 3) / ckpt.LORA_FILE) for e in ("fsdp", "ddp")))
