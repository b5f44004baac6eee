"""Our sampler, with gradients off, against diffusers' own pipelines on the same tiny
checkpoints: TextToVideoSDPipeline (ModelScope) and AnimateDiffPipeline (AnimateDiff and
AnimateDiff-Lightning), for DDIM and DPM-Solver++ (and Euler for Lightning)."""
from __future__ import annotations

import pytest
import torch
from diffusers import (AnimateDiffPipeline, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, MotionAdapter, TextToVideoSDPipeline)

from backbones.animatediff import ANIMATEDIFF_SCHEDULER
from backbones.animatediff_lightning import LIGHTNING_SCHEDULER, load_adapter, lightning_file
from backbones.loading import Source
from tests.test_backbones import PROMPTS, build_backbone
from tests.tiny_models import ADAPTER_CONFIG
from vader.sampling.differentiable import make_noise, sample

SCHEDULERS = {"ddim": DDIMScheduler, "dpmsolver": DPMSolverMultistepScheduler,
              "euler": EulerDiscreteScheduler}
FRAMES, SIZE, STEPS = 4, 16, 5


def reference_pipeline(name: str, scheduler: str, folders):
    """The pipeline as a diffusers user would set it up, from the same folders."""
    cls = SCHEDULERS[scheduler]
    if name == "modelscope":
        pipe = TextToVideoSDPipeline.from_pretrained(str(folders["modelscope"]))
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        return pipe
    if name == "animatediff":
        adapter, overrides = MotionAdapter.from_pretrained(str(folders["motion_adapter"])), \
            ANIMATEDIFF_SCHEDULER
    else:
        adapter = load_adapter(Source("lightning", str(folders["lightning"]), lightning_file(4)),
                               ADAPTER_CONFIG)
        overrides = LIGHTNING_SCHEDULER
    pipe = AnimateDiffPipeline.from_pretrained(str(folders["sd15"]), motion_adapter=adapter)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    return pipe


@pytest.mark.parametrize("name, scheduler, guidance", [
    ("modelscope", "ddim", 7.5), ("modelscope", "dpmsolver", 7.5),
    ("animatediff", "ddim", 7.5), ("animatediff", "dpmsolver", 7.5),
    ("animatediff_lightning", "euler", 1.0), ("animatediff_lightning", "dpmsolver", 1.0),
])
def test_sampler_matches_the_diffusers_pipeline(name, scheduler, guidance, tiny_folders):
    backbone = build_backbone(name, tiny_folders, f"backbone.scheduler={scheduler}")
    noise = make_noise(backbone.latent_shape(2, FRAMES, SIZE, SIZE), [11, 12])
    with torch.no_grad():
        ours = backbone.decode(sample(backbone, backbone.trainable_module(), PROMPTS, noise,
                                      num_inference_steps=STEPS, guidance_scale=guidance))
    pipe = reference_pipeline(name, scheduler, tiny_folders)
    assert type(pipe.scheduler) is backbone.scheduler_cls
    theirs = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=guidance, height=SIZE,
                  width=SIZE, num_frames=FRAMES, latents=noise.clone(), output_type="pt").frames
    assert ours.shape == theirs.shape == (2, FRAMES, 3, SIZE, SIZE)
    assert ours.std() > 0.01  # a real video, not a constant both sides agree on
    assert (ours - theirs).abs().max().item() < 1e-5


def test_parity_would_catch_a_wrong_guidance(tiny_folders):
    # The check above is sharp enough: a guidance scale off by 1% already shows.
    backbone = build_backbone("modelscope", tiny_folders, "backbone.scheduler=ddim")
    noise = make_noise(backbone.latent_shape(2, FRAMES, SIZE, SIZE), [11, 12])
    with torch.no_grad():
        a, b = (backbone.decode(sample(backbone, backbone.trainable_module(), PROMPTS, noise,
                                       num_inference_steps=STEPS, guidance_scale=g))
                for g in (7.5, 7.575))
    assert (a - b).abs().max().item() > 1e-5
