"""The GPU check (benchmarks/gpu_check.py, issue 21 item 5) rehearsed on the CPU with the tiny
backbone, so the script a lent GPU runs cannot rot: every number it reports comes out of the
real_size_step and memory-estimate runs it starts, into one JSON and one markdown table; a setting
that runs out of time is reported as such, with no numbers."""
from __future__ import annotations

import json

from benchmarks.gpu_check import main


def test_the_rehearsal_writes_the_json_and_the_table(tmp_path):
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    fsdp, row = report["rows"]
    # The FSDP check's two runs finished, the second resumed from the first's checkpoint; on a
    # CPU accelerate cannot run FSDP, and the row says so rather than "ok".
    assert fsdp["setting"] == "fsdp_resume" and fsdp["status"] == "not FSDP (no GPU)"
    assert fsdp["engine"].startswith("engine: 1 process(es), not FSDP: accelerate runs FSDP only on GPUs")
    assert "resumed from" in (tmp_path / "fsdp_resume.log").read_text()
    assert (tmp_path / "fsdp_resumed" / "checkpoints" / "step_000003").is_dir()
    assert report["tiny"] and row["status"] == "ok" and row["device"] == "cpu"
    measured = json.loads((tmp_path / "tiny.json").read_text())
    assert row["step_seconds"] in measured["step_seconds"] and row["sample_seconds"] in measured["sample_seconds"]
    assert row["step_over_sample"] == row["step_seconds"] / row["sample_seconds"] > 0
    assert row["rollout_videos_per_second"] > 0 and row["achieved_tflops"] > 0
    assert 3 < row["estimate_gib"] < 5  # ModelScope's bf16 weights (3.4 GiB) and a small step
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| tiny | ok | – | " in table and "GRPO rollout videos/s" in table
    assert "FSDP2 on one process, two steps then resumed without it: not FSDP (no GPU)" in table


def test_a_setting_out_of_time_is_reported_without_numbers(tmp_path):
    assert main(["--tiny", "--out", str(tmp_path), "--budget", "0.5"]) == 1
    fsdp, row = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert fsdp["status"] == "out of time" and fsdp["engine"] is None
    assert row["status"] == "out of time" and "step_seconds" not in row and "estimate_gib" not in row
