"""Bad input gets a clear error that says what to do, and nothing already written is lost."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import ROOT, TINY, compose_cfg


def test_unknown_reward_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("reward_fn=aesthetik")
    text = str(err.value)
    assert "aesthetik" in text and "colorfulness" in text and "brightness" in text


@pytest.mark.parametrize("overrides, error, match", [
    (("backprop_steps=5",), ValueError, r"backprop_steps=5 must be between 1 and num_inference_steps=3"),
    (("backprop_mode=specific",), ValueError, r"backprop_step in \[0, 2\]"),
    (("height=18",), ValueError, r"multiples of 4 \(e\.g\. height=16"),
    (("num_frames=0",), ValueError, r"num_frames must be at least 1"),
    (("lora_path=/no/such/checkpoint",), FileNotFoundError, r"lora_path='/no/such/checkpoint'.*Point lora_path"),
    (("checkpoint_every=0",), ValueError, r"checkpoint_every must be at least 1"),
    (("video_format=avi",), ValueError, r"video_format='avi'"),
    (("mixed_precision=fp8",), ValueError, r"mixed_precision='fp8'"),
    (("reward_fn.frames=0",), ValueError, r"frames=0.*'all', 'random'"),
])
def test_bad_settings_fail_with_a_clear_message(make_trainer, overrides, error, match):
    with pytest.raises(error, match=match):
        make_trainer(*overrides)


def test_empty_prompt_file(make_trainer, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="no prompts"):
        make_trainer("prompt_fn=text_file", f"prompt_fn.path={empty}")


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(run_dir) -> list[str]:
    return [sys.executable, "train.py", *[o for o in TINY if not o.startswith("run_name")],
            "num_steps=1", "checkpoint_every=1", f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished run (with a checkpoint), trained once; each case below works on a copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    first = subprocess.run(train_args(run_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize("bad", ["lora_path=/no/such/dir", "height=18", "backprop_steps=9",
                                 "reward_fn=nope", "seed=abc"])
def test_bad_input_keeps_an_existing_run_intact(finished_run, tmp_path, bad):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = digest(run_dir)
    assert any(p.name == "pytorch_lora_weights.safetensors" for p in before)
    again = subprocess.run([*train_args(run_dir), bad], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0
    assert bad.split("=")[0].split(".")[-1] in again.stderr or "nope" in again.stderr
    assert digest(run_dir) == before
