"""A backbone pointed at something that is not there fails fast, before any weight loads, with a
message naming the key, the source and how to provide it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

import backbones.animatediff
import backbones.animatediff_lightning
import backbones.loading
import backbones.modelscope
from tests.conftest import ROOT, TINY
from tests.test_backbones import build_backbone


@pytest.fixture
def no_loading(monkeypatch):
    """Any weight load during the test is a failure: errors must come before loading."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model part was loaded before the sources were checked")
    for module in (backbones.loading, backbones.modelscope, backbones.animatediff):
        monkeypatch.setattr(module, "load_part", refuse)
    monkeypatch.setattr(backbones.animatediff_lightning, "load_file", refuse)


@pytest.mark.parametrize("name, key", [("modelscope", "pretrained"), ("animatediff", "pretrained"),
                                       ("animatediff", "motion_adapter"),
                                       ("animatediff_lightning", "lightning")])
def test_missing_folder(name, key, tiny_folders, tmp_path, no_loading):
    missing = tmp_path / "not" / "here"
    with pytest.raises(FileNotFoundError, match=rf"backbone.{key}='{missing}': no such folder"):
        build_backbone(name, tiny_folders, f"backbone.{key}={missing}")


def test_folder_missing_a_part(tiny_folders, tmp_path, no_loading):
    partial = tmp_path / "ms"
    shutil.copytree(tiny_folders["modelscope"], partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(FileNotFoundError, match=r"vae/config.json is missing from that folder"):
        build_backbone("modelscope", tiny_folders, f"backbone.pretrained={partial}")
    (partial / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(tiny_folders["modelscope"] / "vae", partial / "vae")
    with pytest.raises(FileNotFoundError, match=r"no weights .* beside unet/config.json"):
        build_backbone("modelscope", tiny_folders, f"backbone.pretrained={partial}")


def test_hub_id_while_offline(tiny_folders, tmp_path, monkeypatch, no_loading):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained='someone/some-model'.*not in "
                       r"the local Hugging Face cache and the hub is offline.*huggingface-cli download"):
        build_backbone("modelscope", tiny_folders, "backbone.pretrained=someone/some-model")


def test_hub_id_without_network(tiny_folders, tmp_path, monkeypatch, no_loading):
    # Online mode, but the hub endpoint refuses connections (a closed local port).
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained='someone/some-model': cannot "
                       r"reach the Hugging Face hub to fetch unet/config.json"):
        build_backbone("modelscope", tiny_folders, "backbone.pretrained=someone/some-model")


@pytest.mark.parametrize("override, match", [
    ("backbone.unet_dtype=fp64", r"backbone.unet_dtype='fp64' is not a dtype"),
    ("backbone.scheduler=pndm", r"unknown scheduler 'pndm'"),
    ("lora_target_modules=[nonexistent_layer]", r"matched no layer"),
])
def test_bad_backbone_settings(tiny_folders, override, match):
    with pytest.raises(ValueError, match=match):
        build_backbone("modelscope", tiny_folders, override)


@pytest.mark.parametrize("name", ["modelscope", "animatediff", "animatediff_lightning"])
def test_unknown_attention_fails_before_loading(name, tiny_folders, no_loading):
    with pytest.raises(ValueError, match=r"backbone\.attention='flash'.*\['eager', 'sdpa'\]"):
        build_backbone(name, tiny_folders, "backbone.attention=flash")


def test_lightning_steps_must_exist(tiny_folders):
    with pytest.raises(ValueError, match=r"backbone.steps=3.*\(1, 2, 4, 8\)"):
        build_backbone("animatediff_lightning", tiny_folders, "backbone.steps=3")


def test_train_py_with_the_real_default_fails_fast_offline(tmp_path):
    # `backbone=modelscope` as shipped names the hub id; offline, with nothing cached, the run
    # stops within seconds, says what to do, and writes nothing.
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    run_dir = tmp_path / "run"
    start = time.time()
    result = subprocess.run([sys.executable, "train.py", "backbone=modelscope",
                             *[o for o in TINY if o.startswith(("num_", "height", "width"))],
                             f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "damo-vilab/text-to-video-ms-1.7b" in result.stderr
    assert "huggingface-cli download" in result.stderr
    assert time.time() - start < 120
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_eta_needs_ddim(make_trainer):
    with pytest.raises(ValueError, match=r"eta=0.5 needs a DDIM scheduler.*backbone.scheduler=ddim"):
        make_trainer("backbone.scheduler=dpmsolver", "eta=0.5")
