"""Two CPU processes (gloo) under `accelerate launch` train one LoRA, not two: both ranks end
with the same weights, equal to one process trained on the same global batch; and two machines'
launches (`configs/accelerate/multi_node.yaml`, both on this host) train exactly what two
processes on one machine do."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, free_port

ARGS = ["num_steps=3", "checkpoint_every=3", "backprop_mode=rand"]


def run(cmd, tmp):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
CONFIGS = ROOT / "configs" / "accelerate"


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The shipped CPU config's two processes, one sample each."""
    out = tmp_path_factory.mktemp("two")
    run([*LAUNCH, "--config_file", str(CONFIGS / "cpu_ddp.yaml"), "--dynamo_backend", "no",
         "-m", "tests.ddp_worker", str(out), "train_batch_size=1", *ARGS], out)
    return out


@pytest.mark.slow
def test_two_processes_match_one(two, tmp_path):
    one = tmp_path / "one"
    run([sys.executable, "-m", "tests.ddp_worker", str(one), "train_batch_size=2", *ARGS], tmp_path)
    rank0 = assert_ranks_match_one(two, one)
    curves = [[(r["loss"], r["grad_norm"]) for r in map(json.loads, (d / "run" / "metrics.jsonl")
               .read_text().splitlines()) if r["split"] == "train"] for d in (two, one)]
    assert len(curves[0]) == 3
    for (loss2, norm2), (loss1, norm1) in zip(*curves):
        assert loss2 == pytest.approx(loss1, rel=1e-5) and norm2 == pytest.approx(norm1, rel=1e-4)
    # only the main process wrote the run directory's checkpoint, and it holds the same LoRA
    saved = load_file(two / "run" / "checkpoints" / "step_000003" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)


def assert_ranks_match_one(two, one, share: float = 1e-3,
                           most: float | None = 2e-3) -> dict[str, torch.Tensor]:
    """The LoRAs tests.ddp_worker wrote: both ranks of the two-process run hold the same weights,
    within float-order noise of the one-process run's (at most `share` of the elements off by
    more than 1% of a step, none by more than `most`, unless None); returns rank 0's."""
    rank0 = load_file(two / "lora_rank0.safetensors")
    rank1 = load_file(two / "lora_rank1.safetensors")
    single = load_file(one / "lora_rank0.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for k in rank0:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
    # Adam divides by sqrt(v): where a gradient element is ~0, a 1e-7 difference in the order of
    # the float sums (DDP's all-reduce vs one batch mean) can move that one element by a fraction
    # of lr (1e-2 here), and which elements do so shifts with any change to the float ops. So:
    # nearly every element within 1% of one step, none beyond 20% of one. Training each rank on
    # its own sample instead moves most elements by whole steps.
    assert_float_order_noise(rank0, single, share, most)
    return rank0


def assert_float_order_noise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                             share: float = 1e-3, most: float | None = 2e-3) -> None:
    """Two trained LoRAs differ by no more than float-order noise (above): at most `share` of
    the elements more than 1e-4 apart, none more than `most` (unless None)."""
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    moved = torch.cat([b[k].abs().flatten() for k in b])
    assert moved.max() > 1e-3  # it trained
    assert (diff > 1e-4).float().mean() < share, f"{int((diff > 1e-4).sum())} of {diff.numel()}"
    assert most is None or diff.max() < most, f"{float(diff.max()):.2e}"


@pytest.mark.slow
def test_two_machines_train_what_two_processes_on_one_do(two, tmp_path):
    """configs/accelerate/multi_node.yaml launched twice on this host, as machine 0 and machine 1
    (one process each, gloo, --main_process_ip 127.0.0.1): both ranks end with the LoRA of the
    one-machine run, bit for bit (the same all-reduce over the same two ranks)."""
    nodes = tmp_path / "nodes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = str(free_port())
    procs = [subprocess.Popen([*LAUNCH, "--config_file", str(CONFIGS / "multi_node.yaml"), "--num_processes", "2",
                               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                               "--main_process_port", port, "--dynamo_backend", "no", "-m", "tests.ddp_worker",
                               str(nodes), "train_batch_size=1", *ARGS],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
    ranks = [load_file(nodes / f"lora_rank{r}.safetensors") for r in (0, 1)]
    single = load_file(two / "lora_rank0.safetensors")
    assert ranks[0].keys() == single.keys()
    for k in single:
        assert torch.equal(ranks[0][k], single[k]) and torch.equal(ranks[1][k], single[k]), k
    assert (nodes / "run" / "checkpoints" / "step_000003").is_dir()  # machine 0's rank 0 wrote the run
