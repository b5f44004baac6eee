"""Reward-gradient fine-tuning of text-to-video diffusion models.

    accelerate launch train.py                                  # tiny offline model, CPU, minutes
    accelerate launch train.py backbone=modelscope reward_fn=aesthetic
    python train.py -m seed=1,2 reward_fn=brightness,colorfulness   # a sweep, one dir per job
    accelerate launch train.py only_val=True lora_path=outputs/default/checkpoints/step_000040

Composes the config, builds the objects it names, and hands them to `vader`.
"""
from __future__ import annotations

import hydra
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vader.build import build_trainer
from vader.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    set_seed(cfg.seed)  # LoRA initialisation draws from the global generator
    hydra_cfg = HydraConfig.get()
    trainer = build_trainer(cfg, hydra_cfg.runtime.output_dir,
                            reward_name=hydra_cfg.runtime.choices["reward_fn"])
    if trainer.is_main:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        # An evaluation must not overwrite the config of the training run it evaluates.
        prefix = "only_val_" if cfg.only_val else ""
        (trainer.run_dir / f"{prefix}config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        # The command-line overrides, for `python -m vader.sweep` to tabulate a sweep by.
        overrides = OmegaConf.create(list(hydra_cfg.overrides.task))
        (trainer.run_dir / f"{prefix}overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    trainer.setup()
    return trainer.only_val() if trainer.cfg.only_val else trainer.train()


if __name__ == "__main__":
    main()
