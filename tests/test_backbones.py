"""The backbone contract, over every backbone: shapes, only LoRA trainable, gradients reaching
LoRA through the truncated steps, LoRA save/load. The diffusers backbones load tiny random-weight
checkpoints of the real classes from folders in the real layouts (tests/tiny_models.py)."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import backbone_overrides, compose_cfg
from vader.loop import checkpoint as ckpt
from vader.build import build
from vader.config import check_targets
from vader.protocols import Backbone
from vader.sampling.differentiable import cutoff_index, dead_steps, make_noise, sample

BACKBONES = ("tiny", "modelscope", "animatediff", "animatediff_lightning", "videocrafter2")
PROMPTS = ["a red car", "a cat on a boat"]


def build_backbone(name: str, folders, *extra: str) -> Backbone:
    cfg = compose_cfg(*backbone_overrides(name, folders), *extra)
    check_targets(cfg)
    return build(cfg.backbone)


def run(backbone: Backbone, cutoff: int | None, steps: int = 3, seeds=(3, 4)) -> torch.Tensor:
    noise = make_noise(backbone.latent_shape(len(seeds), 4, 16, 16), list(seeds))
    latents = sample(backbone, backbone.trainable_module(), PROMPTS[:len(seeds)], noise,
                     num_inference_steps=steps, guidance_scale=3.0, cutoff=cutoff)
    return backbone.decode(latents)


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request, tiny_folders) -> Backbone:
    return build_backbone(request.param, tiny_folders)


def test_is_a_backbone_with_video_shapes(backbone):
    assert isinstance(backbone, Backbone)
    assert backbone.latent_shape(2, 4, 16, 16)[:3] == (2, 4, 4)
    with torch.no_grad():
        frames = run(backbone, cutoff=None)
    assert frames.shape == (2, 4, 3, 16, 16)
    assert frames.min() >= 0 and frames.max() <= 1 and frames.std() > 0
    with pytest.raises(ValueError, match="multiples of"):
        backbone.check_video(4, 18, 16)


def test_only_lora_is_trainable_in_float32(backbone):
    trainable = {n: p for n, p in backbone.trainable_module().named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    for module in (backbone.vae, backbone.text_encoder):
        assert not any(p.requires_grad for p in module.parameters())


def test_gradients_reach_lora_through_the_truncated_steps(backbone):
    module = backbone.trainable_module()
    module.zero_grad(set_to_none=True)
    # Only the last of 3 steps keeps gradients (the last that depends on the model, as training
    # counts them: AnimateDiff's linspace schedule ends with an identity step at t=0).
    dead = dead_steps(backbone.make_scheduler, 3)
    cutoff = cutoff_index("last", 3, backprop_steps=1, dead=dead)
    assert cutoff == (1 if backbone.name == "animatediff" else 2)
    frames = run(backbone, cutoff=cutoff)
    frames.mean().backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values() if g is not None)
    # lora_B starts at zero, so the gradient shows up on lora_B; it must reach most layers.
    reached = [n for n, g in grads.items() if "lora_B" in n and g is not None and g.abs().sum() > 0]
    assert len(reached) > 0.5 * sum("lora_B" in n for n in grads)
    assert all(p.grad is None for n, p in module.named_parameters() if not p.requires_grad)
    module.zero_grad(set_to_none=True)


def test_eager_attention_keeps_the_lora_gradients(backbone, tiny_folders):
    """backbone.attention=eager swaps every attention processor (UNet3D's, the motion UNet's and
    the VAE's) and leaves peft's LoRA layers where they were: the same LoRA gradients as sdpa.
    tests/test_switches.py compares the two on a whole training step of the tiny backbone."""
    from diffusers.models.attention_processor import AttnProcessor

    eager = build_backbone(backbone.name, tiny_folders, "backbone.attention=eager")
    eager.load_lora_state_dict(backbone.lora_state_dict())
    for module in (eager.trainable_module(), eager.vae):
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor}
    cutoff = cutoff_index("last", 3, backprop_steps=1, dead=dead_steps(backbone.make_scheduler, 3))
    grads = []
    for b in (backbone, eager):
        params = [p for p in b.trainable_module().parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(run(b, cutoff=cutoff).mean(), params))
    scale = max(g.abs().max().item() for g in grads[0])
    assert scale > 0
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_lora_round_trip_through_a_checkpoint(backbone, tiny_folders, tmp_path):
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in backbone.trainable_module().named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        tuned = run(backbone, cutoff=None)
    folder = ckpt.save_checkpoint(tmp_path, 1, backbone.lora_state_dict(),
                                  lora_metadata=backbone.lora_metadata())
    fresh = build_backbone(backbone.name, tiny_folders)
    with torch.no_grad():
        base = run(fresh, cutoff=None)
        fresh.load_lora_state_dict(ckpt.load_lora(folder))
        reloaded = run(fresh, cutoff=None)
    assert (tuned - base).abs().max() > 1e-4  # the LoRA does something, so equality means a load
    torch.testing.assert_close(reloaded, tuned, rtol=0, atol=1e-6)
    with torch.no_grad():
        for n, p in backbone.trainable_module().named_parameters():
            if "lora_B" in n:
                p.zero_()


def test_wrong_rank_is_refused_with_the_reason(backbone, tiny_folders):
    other = build_backbone(backbone.name, tiny_folders, "lora_rank=2")
    with pytest.raises(ValueError, match="lora_rank"):
        other.load_lora_state_dict(backbone.lora_state_dict())


def test_lora_dropout_acts_in_training_steps_only(make_trainer):
    from vader.evaluation.evaluate import set_lora_dropout
    trainer = make_trainer("lora_dropout=0.5")
    unet = trainer.backbone.trainable_module()
    assert trainer.backbone.lora_config.lora_dropout == 0.5
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    latents, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([500])
    cond = trainer.backbone.encode_prompts(["a cat"])

    def out():
        with torch.no_grad():
            return trainer.backbone.predict(unet, latents, t, cond)
    assert torch.equal(out(), out())  # built in eval mode: no dropout
    set_lora_dropout(unet, True)      # what a training step does
    assert not torch.equal(out(), out())
    assert not any(m.training for n, m in unet.named_modules() if "lora_dropout" not in n)
    set_lora_dropout(unet, False)     # what evaluation does
    assert torch.equal(out(), out())


# --- training on data: encode, the forward process, the target (issue 15, item 8) ------------
def test_encode_then_decode_keeps_shape_and_range(backbone):
    frames = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    latents = backbone.encode(frames)
    assert latents.shape == backbone.latent_shape(2, 4, 16, 16)
    assert torch.equal(latents, backbone.encode(frames))  # the posterior mean: deterministic
    drawn = backbone.encode(frames, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == latents.shape and not torch.equal(drawn, latents)
    with torch.no_grad():
        again = backbone.decode(latents)
    assert again.shape == frames.shape and again.min() >= 0 and again.max() <= 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_perfect_predictor_recovers_the_clean_latent(backbone, prediction_type):
    """Noise clean latents with `add_noise`, hand diffusers' DDIM step `training_target` as the
    model output: its x0 estimate must be the clean latents, for either prediction type."""
    from diffusers import DDIMScheduler

    backbone.prediction_type = prediction_type  # the module-scoped fixture: restored below
    try:
        config = {**backbone.scheduler_config, "prediction_type": prediction_type}
        # DDIM, the backbone's own where it has one (VideoCrafter2's rescales x0 for its scaled
        # forward process).
        own = backbone.make_scheduler()
        scheduler = (type(own) if isinstance(own, DDIMScheduler) else DDIMScheduler).from_config(config)
        if backbone.name == "videocrafter2" and prediction_type != "epsilon":
            with pytest.raises(ValueError, match="predicts the noise"):
                backbone.training_target(torch.zeros(1), torch.zeros(1), torch.zeros(1))
            return
        scheduler.set_timesteps(10)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(backbone.latent_shape(2, 4, 16, 16), generator=g)
        noise = torch.randn(latents.shape, generator=g)
        for t in scheduler.timesteps[[0, 4, 9]]:
            ts = t.expand(2)
            noisy = backbone.add_noise(latents, noise, ts)
            torch.testing.assert_close(noisy, scheduler.add_noise(latents, noise, ts))
            target = backbone.training_target(latents, noise, ts)
            x0 = scheduler.step(target, t, noisy).pred_original_sample
            torch.testing.assert_close(x0, latents, rtol=1e-4, atol=1e-4)
    finally:
        backbone.prediction_type = backbone.scheduler_config.get("prediction_type", "epsilon")
