"""A LoRA trained by train.py loads into the diffusers pipeline with diffusers' (or, where
diffusers lacks it, peft's) standard LoRA calls, and the pipeline then makes our sampler's video."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY, backbone_overrides
from tests.test_backbones import PROMPTS, build_backbone
from tests.test_parity import FRAMES, SIZE, reference_pipeline
from vader.loop import checkpoint as ckpt
from vader.sampling.differentiable import make_noise, sample

STEPS = 3
CASES = {"modelscope": ("dpmsolver", 7.5), "animatediff": ("ddim", 7.5),
         "animatediff_lightning": ("euler", 1.0)}
LORA = ["lora_rank=4", "lora_alpha=8"]  # alpha != rank: the scale must travel with the file


def load_lora_into_modelscope(pipe, folder) -> None:
    """diffusers 0.42's TextToVideoSDPipeline.load_lora_weights raises AttributeError (its
    UNet3DConditionModel has no `load_lora_adapter`); this is peft's standard route, the same
    lines the README gives users."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    path = folder / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    config = LoraConfig(**{k.removeprefix("unet."): v for k, v in meta.items()})
    inject_adapter_in_model(config, pipe.unet)
    set_peft_model_state_dict(pipe.unet, {k.removeprefix("unet."): v
                                          for k, v in load_file(path).items()})


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_trained_lora_loads_into_the_diffusers_pipeline(name, tiny_folders, tmp_path):
    scheduler, guidance = CASES[name]
    overrides = [*backbone_overrides(name, tiny_folders), *LORA,
                 f"backbone.scheduler={scheduler}", f"guidance_scale={guidance}"]
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", *[o for o in TINY if not o.startswith("run_name")],
         *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = ckpt.resolve_lora_path(run_dir / "checkpoints").parent  # checkpoints/step_000002

    backbone = build_backbone(name, tiny_folders, *overrides)
    backbone.load_lora_state_dict(ckpt.load_lora(folder))
    noise = make_noise(backbone.latent_shape(2, FRAMES, SIZE, SIZE), [5, 6])
    with torch.no_grad():
        ours = backbone.decode(sample(backbone, backbone.trainable_module(), PROMPTS, noise,
                                      num_inference_steps=STEPS, guidance_scale=guidance))

    pipe = reference_pipeline(name, scheduler, tiny_folders)
    call = dict(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=guidance, height=SIZE,
                width=SIZE, num_frames=FRAMES, output_type="pt")
    base = pipe(latents=noise.clone(), **call).frames
    if hasattr(pipe.unet, "load_lora_adapter"):
        pipe.load_lora_weights(str(folder))  # diffusers' standard call
    else:
        load_lora_into_modelscope(pipe, folder)
    tuned = pipe(latents=noise.clone(), **call).frames
    assert (tuned - base).abs().max().item() > 1e-3  # the trained LoRA changes the video
    assert (tuned - ours).abs().max().item() < 1e-5
