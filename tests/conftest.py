"""Shared fixtures: the *real* configs from conf/, composed with overrides that shrink the run
to seconds on a CPU (tiny backbone, few frames and steps). Tests never download anything."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vader.build import build_trainer
from vader.config import register_configs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# The random tiny model, a weight-free reward and prompts of any words, in place of the default
# job's world model, world reward and world prompts (docs/world.md): most tests are about the
# machinery, not the world. Experiments choose their own backbone, so their tests use SIZES alone.
TOY = ["backbone=tiny", "reward_fn=colorfulness", "prompt_fn=builtin"]
# Small enough for seconds per run, big enough to exercise guidance, several steps and frames.
SIZES = ["num_frames=4", "height=16", "width=16", "num_inference_steps=3", "num_val_seeds=1",
         "val_batch_size=4", "num_steps=2", "checkpoint_every=2", "val_every=100",
         "run_name=test", "lr=1e-2", "video_format=gif"]
TINY = [*TOY, *SIZES]

register_configs()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers and process groups the
    tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


@pytest.fixture
def make_trainer(tmp_path):
    """make_trainer(*overrides, run_dir=None) -> a Trainer built like train.py builds it."""
    def make(*overrides: str, run_dir: Path | None = None):
        import accelerate.utils
        cfg = compose_cfg(*overrides)
        accelerate.utils.set_seed(cfg.seed)
        return build_trainer(cfg, str(run_dir or tmp_path / "run"))
    return make


F32 = ["backbone.unet_dtype=fp32", "backbone.vae_dtype=fp32", "backbone.text_encoder_dtype=fp32"]
DIFFUSERS_BACKBONES = ("modelscope", "animatediff", "animatediff_lightning")


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight checkpoints written in the real hub layouts (see tests/tiny_models.py)."""
    from tests import tiny_models
    from tests.tiny_videocrafter2 import write_videocrafter2
    root = tmp_path_factory.mktemp("tiny_models")
    return {"modelscope": tiny_models.write_modelscope(root / "modelscope"),
            "sd15": tiny_models.write_sd15(root / "sd15"),
            "motion_adapter": tiny_models.write_motion_adapter(root / "motion_adapter"),
            "lightning": tiny_models.write_lightning(root / "lightning", steps=4),
            "videocrafter2": {k: v for k, v in write_videocrafter2(root / "videocrafter2").items()
                              if k in ("checkpoint", "tokenizer", "architecture")}}


def backbone_overrides(name: str, folders: dict[str, Path]) -> list[str]:
    """Hydra overrides selecting backbone `name`, pointed at the tiny folders, in float32."""
    from tests.tiny_models import ADAPTER_CONFIG
    if name in ("tiny", "world"):  # built in memory / shipped in backbones/weights/world
        return [f"backbone={name}"]
    if name == "videocrafter2":  # the official LDM layout (tests/tiny_videocrafter2.py)
        vc2 = folders["videocrafter2"]
        return ["backbone=videocrafter2", f"backbone.checkpoint={vc2['checkpoint']}",
                f"backbone.tokenizer={vc2['tokenizer']}", f"backbone.architecture={vc2['architecture']}",
                "backbone.unet_dtype=fp32", "backbone.vae_dtype=fp32", "backbone.text_encoder_dtype=fp32"]
    if name == "modelscope":
        return ["backbone=modelscope", f"backbone.pretrained={folders['modelscope']}", *F32]
    common = [f"backbone={name}", f"backbone.pretrained={folders['sd15']}", *F32]
    if name == "animatediff":
        return [*common, f"backbone.motion_adapter={folders['motion_adapter']}"]
    adapter = ",".join(f"{k}:{list(v) if isinstance(v, tuple) else v}"
                       for k, v in ADAPTER_CONFIG.items())
    return [*common, f"backbone.lightning={folders['lightning']}", "backbone.steps=4",
            f"backbone.adapter_config={{{adapter}}}"]


# --- headless Chromium, for the HTML gallery (tests/test_gallery.py, tests/test_evaluation.py) ---
# Debian's, as install.sh installs them; a user without root points these at their own.
CHROMIUM = Path(os.environ.get("VADER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VADER_CHROMEDRIVER", "/usr/bin/chromedriver"))


def require_chromium(binaries=(CHROMIUM, CHROMEDRIVER)) -> None:
    missing = [str(p) for p in binaries if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `bash install.sh` as root (it installs "
                    "Debian's chromium and chromium-driver), or set VADER_CHROMIUM and "
                    "VADER_CHROMEDRIVER to a Chromium and its chromedriver")


@pytest.fixture
def browser(tmp_path):
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the Service path: Selenium Manager fetches nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--window-size=1280,1600",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def severe(driver) -> list[dict]:
    entries = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    for entry in entries:
        print("browser console:", entry)
    return entries
