"""Config composition: typos fail before any model is built, naming the key; shipped YAMLs fit
their targets; a sweep makes one complete run directory per job."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from tests.conftest import CONF, ROOT, TINY, compose_cfg
from vader.config import _target_params, check_targets


@pytest.mark.parametrize("override, key", [("lrr=1", "lrr"), ("lr=abc", "lr"),
                                           ("reward_fn.gard_scale=0.1", "gard_scale"),
                                           ("loss.targte=0.5", "targte")])
def test_typo_fails_while_composing(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(override)
    assert key in str(err.value) + str(err.value.__cause__)


def test_unknown_key_inside_a_group_names_it():
    cfg = compose_cfg("+reward_fn.gard_scale=0.1")  # '+' gets past Hydra; our check catches it
    with pytest.raises(ValueError, match=r"reward_fn\.gard_scale.*valid keys: eps, frames"):
        check_targets(cfg)
    cfg = compose_cfg()
    with open_dict(cfg):
        cfg.backbone.chanels = [8]  # as if misspelt inside conf/backbone/tiny.yaml
    with pytest.raises(ValueError, match=r"backbone\.chanels"):
        check_targets(cfg)


def test_missing_required_argument_is_named():
    with pytest.raises(ValueError, match=r"prompt_fn\.path.*required"):
        check_targets(OmegaConf.create({"prompt_fn": {"_target_": "vader.data.prompts.text_file"}}))


# Experiments and backbone_defaults are overlays of top-level keys, without a _target_;
# tests/test_experiments.py and the tests below compose them.
OVERLAYS = ("experiment", "backbone_defaults")
GROUP_YAMLS = sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name not in OVERLAYS)


@pytest.mark.parametrize("path", GROUP_YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_yaml_fits_its_target(path):
    node = OmegaConf.load(path)
    if "_target_" not in node:
        pytest.fail(f"{path} has no _target_")
    with open_dict(node):  # required fields that a user fills on the command line
        node.pop("defaults", None)  # Hydra's, not the target's (comprehensive composes its parts)
        for key in [k for k in node if OmegaConf.is_missing(node, k)]:
            node[key] = "x"
    check_targets(node)


@pytest.mark.parametrize("path", GROUP_YAMLS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_values_are_the_python_defaults(path):
    # One source of truth: a group option's YAML states its target's defaults (or leaves a key
    # out, or passes a top-level key through). A YAML value that differs from the Python default
    # means code that builds the target directly (tests, notebooks) gets another model.
    node = OmegaConf.load(path)
    params, _ = _target_params(node._target_)
    plain = OmegaConf.to_container(node, resolve=False)
    plain.pop("defaults", None)
    for key, value in plain.items():
        default = params[key].default if key in params else inspect.Parameter.empty
        if key.startswith("_") or OmegaConf.is_interpolation(node, key) \
                or default is inspect.Parameter.empty:  # required: the YAML must give it
            continue
        default = list(default) if isinstance(default, tuple) else default
        assert value == default, f"{path.name}: {key}={value!r}, but the Python default is {default!r}"


def compose_plain(*overrides: str):
    """conf/train.yaml as a user's command line composes it (no test shrinking)."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("overrides, lr, steps", [
    ([], 5e-3, 10),                                  # the default (world) job keeps its numbers
    (["backbone=modelscope"], 2e-4, 25),             # VADER's, not the toy model's
    (["backbone=animatediff"], 2e-4, 25),
    (["backbone=animatediff_lightning"], 2e-4, 4),   # as many steps as the module was distilled for
    (["backbone=modelscope", "lr=1e-3", "num_inference_steps=30"], 1e-3, 30),  # the command line wins
])
def test_each_backbone_trains_with_its_own_defaults(overrides, lr, steps):
    cfg = compose_plain(*overrides)
    assert (cfg.lr, cfg.num_inference_steps) == (lr, steps)
    if overrides:  # and a video size that the real backbone can make
        assert cfg.height % 64 == 0 and cfg.width % 64 == 0 and cfg.num_frames == 16
    else:
        assert (cfg.num_frames, cfg.height, cfg.width) == (8, 32, 32)


def test_backbone_defaults_name_backbones():
    backbones = {p.stem for p in (CONF / "backbone").glob("*.yaml")}
    assert {p.stem for p in (CONF / "backbone_defaults").glob("*.yaml")} == backbones - {"tiny"}


def test_typo_on_command_line_fails_before_anything_is_built(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "num_stepz=3", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "num_stepz" in proc.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_multirun_makes_one_complete_dir_per_job(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "seed=1,2", "reward_fn=brightness,contrast",
         *[o for o in TINY if not o.startswith(("run_name", "num_steps", "reward_fn"))], "num_steps=1",
         f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 4
    combos = {(r, s) for r in ("brightness", "contrast") for s in (1, 2)}
    # the directory is named by the overrides alone (no clock), so every process agrees on it
    assert {(n.split("reward_fn=")[1].split(",")[0], int(n.split("seed=")[1].split(",")[0]))
            for n in (p.name for p in runs)} == combos
    for run in runs:
        assert (run / "checkpoints" / "step_000001" / "pytorch_lora_weights.safetensors").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # train, final val
        assert (run / "overrides.yaml").is_file() and (run / "eval" / "summary.json").is_file()
        cfg = OmegaConf.load(run / "config.yaml")
        assert f"reward_fn={Path(cfg.reward_fn._target_).suffix[1:].lower()}," in run.name
        assert f"seed={cfg.seed}," in run.name
