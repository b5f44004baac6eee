"""Every shipped recipe composes, passes every check, and builds on the tiny diffusers folders;
the VADER recipe carries the numbers of VADER's published run (backbones/configs/vader_recipes.json)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from backbones.sizes import CONFIGS
from tests.conftest import CONF, TINY, backbone_overrides
from vader.config import build_trainer, check_targets

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_experiment(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"+experiment={name}", *overrides])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_builds_on_the_tiny_folders(name, tiny_folders, tmp_path):
    cfg = compose_experiment(name)
    check_targets(cfg)
    backbone = cfg.backbone._target_.split(".")[1]
    # The same recipe, shrunk and pointed at the tiny checkpoints: LoRA targets, scheduler and
    # sampling settings must all suit the architecture.
    small = compose_experiment(name, *backbone_overrides(backbone, tiny_folders), *TINY,
                               "mixed_precision=no")
    trainer = build_trainer(small, str(tmp_path))
    assert trainer.backbone.name == backbone
    assert trainer.cfg.lora_rank == cfg.lora_rank


def test_vader_modelscope_recipe_has_vaders_numbers():
    cfg = compose_experiment("vader_modelscope")
    vader = json.loads((CONFIGS / "vader_recipes.json").read_text())["modelscope"]
    assert cfg.backbone.pretrained == vader["pretrained_model_path"]
    assert (cfg.height, cfg.width, cfg.num_frames) == (vader["height"], vader["width"], vader["num_frames"])
    assert cfg.num_inference_steps == vader["num_inference_steps"]
    assert cfg.guidance_scale == vader["guidance_scale"] and cfg.eta == vader["eta"]
    assert cfg.lora_rank == vader["lora"]["rank"] and cfg.lr == vader["optimizer"]["lr"]
    accumulation = vader["gradient_accumulation_steps"]["launch_script"]
    assert cfg.gradient_accumulation_steps == accumulation
    assert cfg.num_steps == vader["max_train_steps"] // accumulation  # VADER counts micro-steps
    assert cfg.backprop_mode == vader["backprop_mode"] and cfg.backprop_steps == vader["K_backprop_steps"]
    assert cfg.backbone.scheduler == "dpmsolver" and cfg.seed == vader["seed"]
    assert OmegaConf.select(cfg, "reward_fn.frames") == "random"  # decode_frame=-1
