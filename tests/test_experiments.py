"""Every shipped recipe composes, passes every check, and builds on the tiny diffusers folders;
the VADER recipe carries the numbers of VADER's published run (backbones/configs/vader_recipes.json)."""
from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from backbones.sizes import CONFIGS
from tests.conftest import CONF, SIZES, TINY, backbone_overrides
from vader.build import build_trainer
from vader.config import check_targets

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Other projects' runs on Wan2.1 and CogVideoX (VideoX-Fun's reward LoRAs, Flow-GRPO): their
# headers cite their own sources, so VADER's numbers and reward are not asked of them.
PEER_BACKBONES = ("wan", "cogvideox")
PEERS = [n for n in EXPERIMENTS if n.startswith(tuple(f"{b}_" for b in PEER_BACKBONES))]
# VADER's runs carried over; the staged recipes (SFT or DPO, then GRPO) are tested on their own.
VADER_RECIPES = [n for n in EXPERIMENTS if not n.startswith("staged_") and n not in PEERS]
STAGED = [n for n in EXPERIMENTS if n.startswith("staged_")]
VADER = json.loads((CONFIGS / "vader_recipes.json").read_text())


def named_rewards(name: str) -> list[str]:
    """The reward_fn options a recipe's header launches it with, and the one it chooses itself."""
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    chosen = re.findall(r"override /reward_fn: (\w+)", text)
    return sorted(set(re.findall(r"reward_fn=(\w+)", header)) | set(chosen))


@pytest.fixture(scope="module")
def reward_folders(tmp_path_factory) -> dict[str, str]:
    """Tiny CLIP + aesthetic head, tiny HPS files and PickScore's layout (the model alone, its
    processor elsewhere) (tests/tiny_clip.py, tiny_open_clip.py)."""
    from tests import tiny_clip, tiny_open_clip
    root = tmp_path_factory.mktemp("recipe_rewards")
    clip = tiny_clip.reward_folders(root)
    arch = tiny_open_clip.write_arch(root / "arch")
    hps = tiny_open_clip.write_hps(root / "hps", tiny_open_clip.tiny_clip(arch)[0])
    return {**{k: str(v) for k, v in clip.items()}, "arch": arch, "hps": str(hps)}


def reward_overrides(cfg, folders: dict[str, str]) -> list[str]:
    """Point the reward_fn, or every learned part of a composite one, at the tiny files (`++`:
    the parts leave these keys to their defaults, so they are added)."""
    parts = cfg.reward_fn.get("parts")
    rewards = {f"reward_fn.parts.{n}.reward": p.reward._target_ for n, p in parts.items()} \
        if parts else {"reward_fn": cfg.reward_fn._target_}
    out = []
    for key, target in rewards.items():
        if target.endswith("Aesthetic"):
            out += [f"++{key}.pretrained={folders['clip']}", f"++{key}.head_repo={folders['clip']}",
                    f"++{key}.head_file=head.pth"]
        elif target.endswith("HPS"):
            out += [f"++{key}.pretrained={folders['hps']}", f"++{key}.model_name={folders['arch']}"]
        elif target.endswith("PickScore"):
            out += [f"++{key}.pretrained={folders['bare']}", f"++{key}.processor={folders['processor']}"]
    return out


def compose_experiment(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"+experiment={name}", *overrides])


@pytest.mark.parametrize("name", VADER_RECIPES)
def test_recipe_builds_on_the_tiny_folders(name, tiny_folders, reward_folders, tmp_path):
    cfg = compose_experiment(name)
    check_targets(cfg)
    backbone = cfg.backbone._target_.split(".")[1]
    # The same recipe, shrunk and pointed at the tiny checkpoints: LoRA targets, scheduler,
    # sampling settings and its own reward must all suit the architecture.
    small = compose_experiment(name, *backbone_overrides(backbone, tiny_folders), *SIZES,
                               "mixed_precision=no", *reward_overrides(cfg, reward_folders))
    trainer = build_trainer(small, str(tmp_path))
    assert trainer.backbone.name == backbone
    assert trainer.cfg.lora_rank == cfg.lora_rank
    assert trainer.backbone.lora_config.lora_dropout == cfg.lora_dropout


@pytest.mark.parametrize("name, reward", sorted(
    {(n, r) for n in VADER_RECIPES for r in named_rewards(n)}
    | {("vader_modelscope", "aesthetic_hps")}))  # VADER's own mix on VADER's ModelScope run
def test_recipe_composes_with_every_reward_it_names(name, reward):
    assert named_rewards(name), f"{name}.yaml names no reward_fn in its header"
    cfg = compose_experiment(name, f"reward_fn={reward}")
    check_targets(cfg)  # e.g. no recipe key the chosen reward does not take
    for part in (cfg.reward_fn.get("parts") or {}).values():
        assert part.reward.frames == "random"  # VADER's decode_frame=-1, whatever the reward


@pytest.mark.parametrize("name", VADER_RECIPES)
def test_recipe_reward_is_vaders_aesthetic_loss_on_squashed_frames(name):
    # Each header promises VADER's aesthetic loss |score - 10| * 0.1 on one random frame,
    # resized as VADER resizes it (squashed to 224x224, nothing cropped away).
    aesthetic = compose_experiment(name).reward_fn.parts.aesthetic
    vader = VADER["modelscope"]["reward_settings"]["aesthetic"]
    assert (aesthetic.target, aesthetic.grad_scale) == (vader["aesthetic_target"], vader["grad_scale"])
    assert (aesthetic.reward.frames, aesthetic.reward.resize) == ("random", "squash")


def test_animatediff_vader_has_videocrafters_lora():
    cfg = compose_experiment("animatediff_vader")
    lora = VADER["videocrafter"]["lora"]
    # VideoCrafter's peft LoraConfig leaves lora_alpha at peft's default, 8: scale 8 / 16 = 0.5.
    assert (cfg.lora_rank, cfg.lora_alpha / cfg.lora_rank) == (lora["rank"], 0.5)
    assert cfg.lora_dropout == lora["lora_dropout"]
    assert sorted(cfg.lora_target_modules) == sorted(lora["target_modules"])
    assert cfg.reward_fn.parts.hps.reward.version == VADER["videocrafter"]["hps_version"]


def test_vader_videocrafter2_recipe_has_vaders_numbers():
    cfg = compose_experiment("vader_videocrafter2")
    vc = VADER["videocrafter"]
    assert cfg.backbone._target_ == "backbones.videocrafter2.videocrafter2"
    assert (cfg.height, cfg.width, cfg.num_frames) == (vc["height"], vc["width"], vc["num_frames"])
    assert (cfg.num_inference_steps, cfg.eta, cfg.guidance_scale) == (vc["num_inference_steps"], vc["eta"],
                                                                      vc["guidance_scale"])
    assert (cfg.lr, cfg.seed, cfg.num_steps) == (vc["optimizer"]["lr"], vc["seed"], vc["max_train_steps"])
    assert cfg.lora_dropout == vc["lora"]["lora_dropout"] and cfg.max_grad_norm == vc["max_grad_norm"]
    assert cfg.gradient_accumulation_steps == vc["gradient_accumulation_steps"]
    assert (cfg.lora_rank, cfg.lora_alpha / cfg.lora_rank) == (vc["lora"]["rank"], 0.5)
    assert sorted(cfg.lora_target_modules) == sorted(vc["lora"]["target_modules"])
    assert cfg.reward_fn.parts.hps.reward.version == vc["hps_version"]


def test_vader_modelscope_recipe_has_vaders_numbers():
    cfg = compose_experiment("vader_modelscope")
    vader = VADER["modelscope"]
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
    assert OmegaConf.select(cfg, "reward_fn.parts.aesthetic.reward.frames") == "random"  # decode_frame=-1
    assert cfg.lora_alpha / cfg.lora_rank == vader["lora"]["scale"]
    assert cfg.lora_dropout == vader["lora"]["dropout"]


@pytest.fixture(scope="module")
def peer_folders(tmp_path_factory):
    from tests.tiny_cogvideox import write_cogvideox
    from tests.tiny_wan import write_wan
    root = tmp_path_factory.mktemp("recipe_dit")
    return {"wan": write_wan(root / "wan"), "cogvideox": write_cogvideox(root / "cogvideox")}


def peer_overrides(backbone: str, folder, cfg) -> list[str]:
    """The tiny Wan or CogVideoX (tests/tiny_wan.py, tiny_cogvideox.py) in float32, SIZES with their
    frame rule (4k + 1, 8k + 1), and enough steps for the recipe's backprop_steps."""
    steps = max(3, cfg.backprop_steps)
    own = {"wan": ["backbone.max_sequence_length=16", "num_frames=5"],
           "cogvideox": ["backbone.vae_dtype=fp32", "num_frames=9"]}[backbone]
    return [f"backbone={backbone}", f"backbone.pretrained={folder}", "backbone.transformer_dtype=fp32",
            "backbone.text_encoder_dtype=fp32", *own,
            *(s for s in SIZES if not s.startswith(("num_frames=", "num_inference_steps="))),
            f"num_inference_steps={steps}"]


@pytest.mark.parametrize("name", PEERS)
def test_peer_recipe_builds_on_the_tiny_backbone(name, peer_folders, reward_folders, tmp_path):
    """A peer's run composes with every reward its header names, passes every check, and builds
    on the tiny Wan or CogVideoX with its own LoRA (every target module exists) and reward."""
    assert named_rewards(name), f"{name}.yaml names no reward_fn"
    for reward in named_rewards(name):
        check_targets(compose_experiment(name, f"reward_fn={reward}"))
    cfg = compose_experiment(name)
    check_targets(cfg)
    backbone = name.split("_")[0]
    small = compose_experiment(name, *peer_overrides(backbone, peer_folders[backbone], cfg),
                               "mixed_precision=no", *reward_overrides(cfg, reward_folders))
    trainer = build_trainer(small, str(tmp_path))
    assert trainer.backbone.name == backbone
    lora = trainer.backbone.lora_config
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    modules = [n for n, _ in trainer.backbone.trainable_module().named_modules()]
    for target in cfg.lora_target_modules:
        assert any(n == target or n.endswith(f".{target}") for n in modules), target


def header_commands(name: str) -> list[list[str]]:
    """The `accelerate launch train.py ...` commands in a recipe's header, as argument lists."""
    import shlex

    lines = [line[1:].split("  #")[0].strip()
             for line in (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
             if line.startswith("#")]
    commands, pending = [], ""
    for line in lines:
        if pending or line.startswith("accelerate launch train.py"):
            pending += " " + line.rstrip("\\")
            if not line.endswith("\\"):
                words = shlex.split(pending.split("train.py", 1)[1])
                commands.append([w for w in words if "=" in w and not w.endswith("...")])
                pending = ""
    return commands


def test_the_staged_recipe_runs_as_its_header_says(tmp_path, monkeypatch):
    """Stage 1 (SFT) then stage 2 (GRPO) with the exact overrides of staged_1_sft.yaml's header,
    shrunk: stage 2 finds stage 1's run directory where its lora_path says, and starts from the
    LoRA stage 1 ended with."""
    from hydra import compose, initialize_config_dir

    from tests.video_data import write_clip_folder
    from vader.build import build_trainer

    monkeypatch.chdir(tmp_path)
    write_clip_folder(tmp_path / "clips", ["red", "green"])
    sft, dpo, grpo = header_commands("staged_1_sft")
    assert sft[0] == "+experiment=staged_1_sft" and dpo[0] == "+experiment=staged_1_dpo"
    assert grpo[0] == "+experiment=staged_2_grpo"
    small = [*TINY, "data.num_workers=0", "reward_fn=colorfulness"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        stage1 = compose(config_name="train", overrides=sft, return_hydra_config=True)
        run_dir = tmp_path / "outputs" / stage1.hydra.job.override_dirname.replace("/", "_")
        trainer = build_trainer(compose(config_name="train", overrides=[*sft, *small]), str(run_dir))
        assert type(trainer.algorithm).__name__ == "SFT"
        trainer.setup()
        trainer.train()
        stage2 = compose(config_name="train", overrides=[*grpo, *small])
    lora = trainer.backbone.lora_state_dict()
    second = build_trainer(stage2, str(tmp_path / "outputs" / "stage2"))
    assert type(second.algorithm).__name__ == "GRPO"
    second.setup()
    got = second.backbone.lora_state_dict()
    assert all(torch.equal(got[k], lora[k]) for k in lora)
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # stage 1 trained
