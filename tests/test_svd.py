"""Stable Video Diffusion image-to-video (issue 20; backbones/svd.py) on a tiny random checkpoint in
the published layout (tests/tiny_svd.py), with first frames as image prompts
(vader/data/image_prompts.py): our sampler against StableVideoDiffusionPipeline, the per-frame
guidance ramp, the image prompt type, the LoRA contract, reward-gradient training, and the clear
refusals of what is not built (SFT/DPO, GRPO, text prompts)."""
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


def test_what_is_not_built_is_refused_with_the_reason(folders, backbone, make_trainer, tmp_path):
    with pytest.raises(ValueError, match="has none; use prompt_fn=images"):
        backbone.encode_prompts(["a red square"])
    with pytest.raises(ValueError, match="training on data .* not built for SVD"):
        backbone.add_noise(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    from vader.sampling.stochastic import step_kernel
    with pytest.raises(ValueError, match="no step for EulerDiscreteScheduler"):
        step_kernel(backbone.make_scheduler(), 1.0)
