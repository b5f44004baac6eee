"""Stable Video Diffusion image-to-video (issue 20; backbones/svd.py) on a tiny random checkpoint in
the published layout (tests/tiny_svd.py), with first frames as image prompts
(vader/data/image_prompts.py): our sampler against StableVideoDiffusionPipeline, the per-frame
guidance ramp, the image prompt type, the LoRA contract, EDM's training process and the stochastic
Euler step, reward-gradient, GRPO and SFT training, and the refusal of text prompts."""
from __future__ import annotations

import pickle

import pytest
import torch

from backbones.svd import svd
from tests.tiny_svd import write_first_frames, write_svd
from vader.data.image_prompts import ImagePrompt, images, read_folder
from vader.sampling.differentiable import make_noise, sample


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    return {"svd": write_svd(root / "svd"), "frames": write_first_frames(root / "frames", ["red", "blue", "green"])}


@pytest.fixture(scope="module")
def backbone(folders):
    return svd(str(folders["svd"]), unet_dtype="fp32", image_encoder_dtype="fp32", noise_aug_strength=0.0)


def pipeline_latents(folders, prompt, noise, steps, output_type="latent"):
    from diffusers import StableVideoDiffusionPipeline
    from PIL import Image

    pipe = StableVideoDiffusionPipeline.from_pretrained(folders["svd"])
    pipe.set_progress_bar_config(disable=True)
    out = pipe(Image.open(prompt.image).convert("RGB"), height=32, width=32, num_frames=noise.shape[2],
               num_inference_steps=steps, noise_aug_strength=0.0, max_guidance_scale=3.0,
               latents=noise.permute(0, 2, 1, 3, 4).clone(), output_type=output_type).frames
    return out.permute(0, 2, 1, 3, 4) if output_type == "latent" else out


@pytest.mark.parametrize("steps", [2, 5])
def test_our_sampler_matches_the_svd_pipeline(folders, backbone, steps):
    """One video at a time, as the pipeline makes it (guidance ramp 1 -> 3 over frames, its
    negative conditioning): latents and decoded frames within 1e-5 (measured: identical). Two
    videos in one batch differ from one at a time by float rounding of the EDM start, whose latents
    are the noise times sigma_max = 700: within 1e-6 of that scale."""
    prompts = read_folder(folders["frames"], "path")[:2]
    noise = make_noise(backbone.latent_shape(2, 4, 32, 32), [3, 4])
    with torch.no_grad():
        batch = sample(backbone, backbone.trainable_module(), prompts, noise, num_inference_steps=steps,
                       guidance_scale=3.0)
        for i, prompt in enumerate(prompts):
            one = sample(backbone, backbone.trainable_module(), [prompt], noise[i:i + 1],
                         num_inference_steps=steps, guidance_scale=3.0)
            torch.testing.assert_close(one, pipeline_latents(folders, prompt, noise[i:i + 1], steps), atol=1e-5, rtol=1e-5)
            frames = pipeline_latents(folders, prompt, noise[i:i + 1], steps, "pt")
            torch.testing.assert_close(backbone.decode(one), frames.float(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch[i:i + 1], one, atol=700 * 1e-6, rtol=0)


def test_guidance_ramps_over_frames(backbone):
    weights = backbone.guidance_weights(3.0, torch.zeros(1, 4, 5, 2, 2))
    assert weights.flatten().tolist() == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])


def test_image_prompts_are_text_with_a_first_frame(folders, tmp_path):
    prompts = read_folder(folders["frames"], "path")
    assert str(prompts[0]) == "a red square" and isinstance(prompts[0], str) and prompts[0].image.endswith("0_red.png")
    assert prompts[0] != "a red square"  # a plain string is another prompt: no first frame
    other = ImagePrompt("a red square", "elsewhere.png")
    assert other != prompts[0] and len({other, prompts[0]}) == 2  # same text, another image
    assert pickle.loads(pickle.dumps(prompts[0])).image == prompts[0].image
    split = images(str(folders["frames"]), val_fraction=0.34)
    assert len(split.train) == 2 and len(split.val) == 1
    with pytest.raises(ValueError, match="holds no images"):
        images(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        images(str(tmp_path / "missing"))


def test_only_lora_trains_and_its_gradient_arrives_and_round_trips(folders, backbone):
    model = backbone.trainable_module()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for i, (n, p) in enumerate(model.named_parameters()):
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(i))
    prompts = read_folder(folders["frames"], "path")[:1]
    noise = make_noise(backbone.latent_shape(1, 3, 32, 32), [1])
    latents = sample(backbone, model, prompts, noise, num_inference_steps=3, guidance_scale=3.0, cutoff=2)
    backbone.decode(latents).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().max() > 0) for g in grads) > 0.9 * len(grads)
    fresh = svd(str(folders["svd"]), unet_dtype="fp32", image_encoder_dtype="fp32", noise_aug_strength=0.0)
    fresh.load_lora_state_dict(backbone.lora_state_dict())
    with torch.no_grad():
        a = sample(backbone, model, prompts, noise, num_inference_steps=2, guidance_scale=3.0)
        b = sample(fresh, fresh.trainable_module(), prompts, noise, num_inference_steps=2, guidance_scale=3.0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_checkpointing_each_layer_gives_the_same_lora_gradients(folders):
    prompts = read_folder(folders["frames"], "path")[:1]
    grads = []
    for blocks in (False, True):
        backbone = svd(str(folders["svd"]), unet_dtype="fp32", image_encoder_dtype="fp32", noise_aug_strength=0.0,
                       checkpoint_blocks=blocks)
        assert backbone.checkpoint_blocks == blocks
        model = backbone.trainable_module()
        with torch.no_grad():  # the same LoRA in both (peft draws lora_A from the global generator)
            for i, (n, p) in enumerate(model.named_parameters()):
                if "lora_" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(i))
        noise = make_noise(backbone.latent_shape(1, 3, 32, 32), [1])
        latents = sample(backbone, model, prompts, noise, num_inference_steps=3, guidance_scale=3.0, cutoff=1)
        backbone.decode(latents).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_reward_gradients_train_svd_from_first_frames(folders, make_trainer, tmp_path):
    trainer = make_trainer("backbone=svd", f"backbone.pretrained={folders['svd']}", "backbone.unet_dtype=fp32",
                           "backbone.image_encoder_dtype=fp32", "prompt_fn=images",
                           f"prompt_fn.path={folders['frames']}", "prompt_fn.val_fraction=0.34",
                           "height=32", "width=32", "guidance_scale=3", run_dir=tmp_path / "run")
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    result = trainer.train()
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())
    assert result["summary"]["settings"]["num_frames"] == trainer.cfg.num_frames


def test_text_prompts_and_long_videos_are_refused_with_the_fix(folders, backbone, make_trainer, tmp_path):
    with pytest.raises(ValueError, match="has none; use prompt_fn=images"):
        backbone.encode_prompts(["a red square"])
    with pytest.raises(ValueError, match="backbone 'svd' cannot make videos in windows: .*set long.window=null"):
        make_trainer("backbone=svd", f"backbone.pretrained={folders['svd']}", "prompt_fn=images",
                     f"prompt_fn.path={folders['frames']}", "prompt_fn.val_fraction=0.34", "height=32", "width=32",
                     "num_frames=8", "long.window=4", "long.overlap=2", run_dir=tmp_path / "run")


def test_the_edm_forward_process_is_v_prediction_on_its_noise_levels(backbone):
    """add_noise is the UNet's input (x0 + σε)/sqrt(σ² + 1) at c_noise = ln(σ)/4; a network that
    returns training_target is one whose denoised x0, as EulerDiscreteScheduler.step computes it,
    is the clean latent; and the unweighted error on v is EDM's λ(σ)-weighted error on x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.05, 1.0, 80.0], dtype=torch.float64)
    t = (sigma.log() / 4).float()
    s = sigma.view(-1, 1, 1, 1, 1)
    x_in = backbone.add_noise(x0, eps, t)
    torch.testing.assert_close(x_in.double(), (x0 + s * eps) / (s ** 2 + 1).sqrt(), atol=1e-5, rtol=1e-5)
    v = backbone.training_target(x0, eps, t)
    x = x_in.double() * (s ** 2 + 1).sqrt()  # the unscaled latent the scheduler steps
    denoised = v.double() * (-s / (s ** 2 + 1).sqrt()) + x / (s ** 2 + 1)
    torch.testing.assert_close(denoised, x0.double(), atol=1e-4, rtol=1e-4)
    other = torch.randn(v.shape, generator=g).double()
    edm = ((s ** 2 + 1) / s ** 2 * ((other * (-s / (s ** 2 + 1).sqrt()) + x / (s ** 2 + 1)) - x0) ** 2).mean((1, 2, 3, 4))
    torch.testing.assert_close(((other - v) ** 2).mean((1, 2, 3, 4)), edm, rtol=1e-4, atol=1e-6)


def test_the_ancestral_euler_step_is_eulers_step_plus_the_posterior_noise(backbone):
    """EulerAncestralStep on SVD's scheduler: at a vanishing eta its mean is
    EulerDiscreteScheduler.step's sample at every step and its input the scheduler's
    scale_model_input; at eta = 1, fed the v of a known x0, it is the variance-exploding posterior
    q(x_σnext | x_σ, x0) (mean x0 + σnext²/σ² (x − x0), variance σnext² (σ² − σnext²)/σ²)."""
    from vader.sampling.stochastic import EulerAncestralStep, step_kernel

    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(6)
    assert isinstance(step_kernel(scheduler, 1.0), EulerAncestralStep)
    tiny, exact = EulerAncestralStep(scheduler, 1e-7), EulerAncestralStep(scheduler, 1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 2, 4, 4, generator=g) * scheduler.init_noise_sigma
    x0 = torch.randn(2, 4, 2, 4, 4, generator=g)
    for i, t in enumerate(scheduler.timesteps):
        ts = t.expand(2)
        torch.testing.assert_close(tiny.model_input(x, ts), scheduler.scale_model_input(x, t), rtol=1e-6, atol=1e-6)
        out = torch.randn(x.shape, generator=g)
        mean, std = tiny.gaussian(out, ts, x)
        step = scheduler.step(out, t, x).prev_sample
        torch.testing.assert_close(mean, step, rtol=1e-5, atol=1e-5 * float(scheduler.sigmas[i]))
        sigma, nxt = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        v = (x - x0) / sigma  # ε of this x for that x0, turned into v
        v = (v - sigma * x0) / (sigma ** 2 + 1) ** 0.5
        mean, std = exact.gaussian(v, ts, x)
        torch.testing.assert_close(mean.double(), x0.double() + nxt ** 2 / sigma ** 2 * (x - x0).double(),
                                   rtol=1e-4, atol=1e-4 * sigma)
        assert std.flatten().tolist() == pytest.approx([(nxt ** 2 * (sigma ** 2 - nxt ** 2) / sigma ** 2) ** 0.5] * 2,
                                                       rel=1e-5, abs=1e-12)
        x = step
    assert exact.std(scheduler.timesteps)[-1] == 0  # the last step lands on σ = 0: not trainable


def test_grpo_trains_svd(folders, make_trainer, tmp_path):
    """(SFT on SVD: tests/test_image_video.py.)"""
    data = ["algorithm=grpo", "algorithm.eta=1.0", "algorithm.group_size=2", "algorithm.groups_per_step=1",
            "train_batch_size=2"]
    trainer = make_trainer("backbone=svd", f"backbone.pretrained={folders['svd']}", "backbone.unet_dtype=fp32",
                           "backbone.image_encoder_dtype=fp32", "prompt_fn=images",
                           f"prompt_fn.path={folders['frames']}", "prompt_fn.val_fraction=0.34",
                           "height=32", "width=32", "guidance_scale=3", *data, run_dir=tmp_path / "run")
    trainer.setup()
    plan = trainer.algorithm.plan(0)  # on-policy: the update re-evaluates exactly the rollout's steps
    assert abs(float(trainer.algorithm.loss(plan.updates[0][0]).numbers["ratio"]) - 1) < 1e-5
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    trainer.train()
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())


def test_the_rest_of_the_backbone_contract(folders, backbone):
    """What tests/test_backbones.py checks of the text-to-video backbones (which cannot run SVD:
    their prompts are text): shapes and the size refusal, only LoRA trains and in float32 over
    bf16 weights, the frozen parts stay frozen, a LoRA of another rank is refused, and
    encode/decode keep shape and range."""
    from vader.protocols import Backbone

    assert isinstance(backbone, Backbone)
    assert backbone.latent_shape(2, 4, 32, 32) == (2, 4, 4, 16, 16)
    with pytest.raises(ValueError, match="multiples of"):
        backbone.check_video(4, 34, 32)
    bf16 = svd(str(folders["svd"]), unet_dtype="bf16", lora_rank=2)
    trainable = {n: p for n, p in bf16.trainable_module().named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert any(p.dtype == torch.bfloat16 for p in bf16.unet.parameters())
    assert not any(p.requires_grad for m in (bf16.vae, bf16.text_encoder) for p in m.parameters())
    with pytest.raises(ValueError, match="lora_rank"):
        bf16.load_lora_state_dict(backbone.lora_state_dict())
    frames = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = backbone.encode(frames)
    assert latents.shape == backbone.latent_shape(1, 3, 32, 32) and torch.equal(latents, backbone.encode(frames))
    with torch.no_grad():
        again = backbone.decode(latents)
    assert again.shape == frames.shape and again.min() >= 0 and again.max() <= 1
