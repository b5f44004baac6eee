"""`python -m vader.generate` from a LoRA trained by each algorithm on each backbone (issue 18,
must-show 6; tiny random builds in the published layouts, and the shipped world model): one
training step of the algorithm, its checkpoint, then `vader.generate` with that checkpoint. The
videos must exist, have the asked length, name the checkpoint in the gallery, and differ from the
base model's (the LoRA was applied)."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from tests.conftest import DIFFUSERS_BACKBONES, SIZES, backbone_overrides
from tests.video_data import write_clip_folder, write_pairs
from vader.generate import main

ALGORITHMS = ("reward_grad", "grpo", "sft", "dpo")
BACKBONES = ("tiny", "world", *DIFFUSERS_BACKBONES)
PROMPT = "a red circle moves left on a white background"  # a world prompt, fine for the others


def algorithm_args(name: str, backbone: str, tmp_path) -> list[str]:
    if name == "grpo":  # its log-probabilities are DDIM's (vader/sampling/stochastic.py)
        ddim = ["backbone.scheduler=ddim"] if backbone in DIFFUSERS_BACKBONES else []
        return ["algorithm=grpo", "algorithm.group_size=2", "algorithm.groups_per_step=1",
                "train_batch_size=2", *ddim]
    if name == "sft":
        clips = write_clip_folder(tmp_path / "clips", ["red", "blue"])
        return ["algorithm=sft", "dataset=folder", f"dataset.path={clips}", "data.num_workers=0"]
    if name == "dpo":
        pairs = write_pairs(tmp_path / "pairs", ["red", "blue"])
        return ["algorithm=dpo", "dataset=pairs", f"dataset.path={pairs}", "data.num_workers=0"]
    return []


def frames_of(folder) -> np.ndarray:
    (video,) = sorted((folder / "videos").iterdir())
    return iio.imread(video)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_generate_from_each_algorithms_lora(backbone, tiny_folders, make_trainer, tmp_path):
    video = [*backbone_overrides(backbone, tiny_folders), "reward_fn=colorfulness",
             "prompt_fn=world" if backbone == "world" else "prompt_fn=builtin", *SIZES, "lr=0.05"]
    common = [*video, f"prompts=[{PROMPT}]", "seeds=1"]
    base = frames_of(main_page(common, tmp_path / "base"))
    assert base.shape[0] == 4
    for algorithm in ALGORITHMS:
        run = tmp_path / algorithm
        trainer = make_trainer(*video, *algorithm_args(algorithm, backbone, tmp_path), run_dir=run)
        trainer.setup()
        trainer.train_step()
        lora = trainer.save_checkpoint()
        out = main_page([*common, f"lora_path={lora}"], tmp_path / f"gen_{algorithm}")
        assert f"generated: {lora.name}" in (out / "index.html").read_text(), algorithm
        tuned = frames_of(out)
        assert tuned.shape == base.shape, algorithm
        assert np.abs(tuned.astype(int) - base.astype(int)).max() > 0, f"{algorithm}: LoRA had no effect"


def main_page(args: list[str], out):
    main([*args, f"out={out}"])
    return out
