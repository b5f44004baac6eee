"""Wan behind the backbone protocol (issue 19; backbones/wan.py), on tiny random checkpoints
written in the published layout (tests/tiny_wan.py; Wan2.1 and Wan2.2-TI2V kinds): our sampler
against diffusers' WanPipeline, the frame-count rule, the flow-matching forward process, Flow-GRPO's
SDE step, every algorithm, long videos. The LoRA contract and the offline error: tests/test_dit.py."""
from __future__ import annotations

import pytest
import torch

from backbones.wan import wan
from tests.tiny_wan import write_wan
from vader.sampling.differentiable import make_noise, sample

PROMPTS = ["a red circle moves left", "a blue square on a black background"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_wan(tmp_path_factory.mktemp("wan") / "wan")


@pytest.fixture(scope="module")
def backbone(folder):
    return wan(str(folder), transformer_dtype="fp32", text_encoder_dtype="fp32", max_sequence_length=16)


@pytest.mark.parametrize("steps", [2, 5])
def test_our_sampler_matches_wan_pipeline(folder, backbone, steps):
    """Same noise, two guidance passes as WanPipeline makes them: latents within 1e-5, and the
    decoded frames too."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    noise = make_noise(backbone.latent_shape(2, 9, 16, 16), [3, 4])
    with torch.no_grad():
        ours = sample(backbone, backbone.trainable_module(), PROMPTS, noise, num_inference_steps=steps,
                      guidance_scale=6.0, batch_cfg=False)
        theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=6.0, height=16, width=16,
                      num_frames=9, latents=noise.clone(), max_sequence_length=16, output_type="latent").frames
        frames = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=6.0, height=16, width=16,
                      num_frames=9, latents=noise.clone(), max_sequence_length=16, output_type="pt").frames
        decoded = backbone.decode(ours)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert decoded.shape == frames.shape == (2, 9, 3, 16, 16)
    torch.testing.assert_close(decoded, frames.float(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # one network call on the doubled batch: the same up to float order
        batched = sample(backbone, backbone.trainable_module(), PROMPTS, noise, num_inference_steps=steps,
                         guidance_scale=6.0, batch_cfg=True)
    torch.testing.assert_close(batched, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("steps", [2, 5])
def test_wan22_ti2v_runs_as_wan_pipeline_does(tmp_path_factory, steps):
    """Wan2.2-TI2V-5B's kind (tests/tiny_wan.py, ti2v=True): its pipeline gives every latent token
    its own timestep (`expand_timesteps`), all equal in text-to-video, which our one timestep per
    video matches to 1e-5; its 16x VAE decodes the latent prefix exactly too."""
    from diffusers import WanPipeline

    folder = write_wan(tmp_path_factory.mktemp("wan22") / "wan22", ti2v=True)
    ours = wan(str(folder), transformer_dtype="fp32", text_encoder_dtype="fp32", max_sequence_length=16)
    assert ours.latent_shape(2, 9, 32, 32) == (2, 48, 3, 2, 2)
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.expand_timesteps
    noise = make_noise(ours.latent_shape(2, 9, 32, 32), [3, 4])
    with torch.no_grad():
        mine = sample(ours, ours.trainable_module(), PROMPTS, noise, num_inference_steps=steps,
                      guidance_scale=6.0, batch_cfg=False)
        theirs = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=6.0, height=32, width=32, num_frames=9,
                      latents=noise.clone(), max_sequence_length=16, output_type="latent").frames
        whole = ours.decode(mine)
        first = ours.decode(mine, torch.tensor([0, 4]))
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert whole.shape == (2, 9, 3, 32, 32)
    torch.testing.assert_close(first, whole[:, [0, 4]], atol=0, rtol=0)


def test_a_two_transformer_wan22_is_refused(folder, tmp_path):
    """Wan2.2 A14B's layout (transformer_2 and boundary_ratio in model_index.json)."""
    import json
    import shutil

    copy = tmp_path / "a14b"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index.update(boundary_ratio=0.875, transformer_2=["diffusers", "WanTransformer3DModel"])
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="two-transformer Wan2.2 model .*Wan2.2-TI2V-5B"):
        wan(str(copy), transformer_dtype="fp32", text_encoder_dtype="fp32")


def test_frames_come_in_fours_plus_one(backbone):
    assert backbone.latent_shape(1, 13, 32, 16) == (1, 16, 4, 4, 2)
    with pytest.raises(ValueError, match="num_frames=8: .* 4k \\+ 1 frames \\(e.g. num_frames=9\\)"):
        backbone.check_video(8, 16, 16)
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone.check_video(9, 24, 16)


def test_flow_matching_target_recovers_the_clean_latent(backbone):
    """A perfect velocity predictor (ε − x0) turns x_t back into x0: x0 = x_t − σ v."""
    x0, eps = torch.randn(2, 16, 3, 2, 2), torch.randn(2, 16, 3, 2, 2)
    t = torch.tensor([250.0, 900.0])
    xt = backbone.add_noise(x0, eps, t)
    v = backbone.training_target(x0, eps, t)
    torch.testing.assert_close(xt - (t / 1000).view(-1, 1, 1, 1, 1) * v, x0)


@pytest.mark.parametrize("algorithm", ["reward_grad", "sft", "dpo"])
def test_algorithms_train_on_wan(folder, make_trainer, tmp_path, algorithm):
    """A few steps of reward gradients, SFT and DPO on the tiny Wan: the LoRA changes and the run
    evaluates (GRPO: the tests below)."""
    from tests.video_data import write_clip_folder, write_pairs

    data = {"sft": ["algorithm=sft", "dataset=folder", "data.num_workers=0",
                    f"dataset.path={write_clip_folder(tmp_path / 'clips', ['red', 'blue'])}"],
            "dpo": ["algorithm=dpo", "dataset=pairs", "data.num_workers=0",
                    f"dataset.path={write_pairs(tmp_path / 'pairs', ['red', 'blue'])}"]}.get(algorithm, [])
    trainer = make_trainer("backbone=wan", f"backbone.pretrained={folder}", "backbone.transformer_dtype=fp32",
                           "backbone.text_encoder_dtype=fp32", "backbone.max_sequence_length=16",
                           "num_frames=5", "guidance_scale=5", "backprop_steps=1", *data,
                           run_dir=tmp_path / "run")
    trainer.setup()
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    result = trainer.train()
    assert result["summary"]["settings"]["num_frames"] == 5
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())


def test_the_flow_sde_step_is_euler_at_noise_level_0_and_a_gaussian_otherwise(backbone, folder):
    """Flow-GRPO's step: eta = 0 gives FlowMatchEulerDiscreteScheduler.step's sample at every step;
    with eta > 0 the recorded log-probability is the Gaussian density averaged over dimensions."""
    from vader.sampling.stochastic import FlowSDEStep, flow_sde_gaussian, log_prob, step_kernel

    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(4)
    kernel = FlowSDEStep(scheduler, 0.7)
    x = torch.randn(2, 16, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(i + 1))
        sigma, sigma_next = kernel._sigmas(t.reshape(1))
        euler, std0 = flow_sde_gaussian(v, x, sigma, sigma_next, 0.0, kernel.sigma_max)
        expected = scheduler.step(v, t, x).prev_sample
        torch.testing.assert_close(euler, expected, atol=1e-6, rtol=1e-5)
        assert float(std0) == 0.0
        mean, std = kernel.gaussian(v, t.expand(2), x)
        assert (std > 0).all() and torch.isfinite(mean).all()
        sample = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
        normal = torch.distributions.Normal(mean, std.expand_as(mean))
        torch.testing.assert_close(log_prob(sample, mean, std), normal.log_prob(sample).flatten(1).mean(1))
        x = expected
    with pytest.raises(ValueError, match="eta=0"):
        FlowSDEStep(scheduler, 0)
    unipc = wan(str(folder), transformer_dtype="fp32", text_encoder_dtype="fp32", max_sequence_length=16,
                scheduler="unipc").make_scheduler()
    unipc.set_timesteps(4)
    with pytest.raises(ValueError, match="not UniPCMultistepScheduler; set backbone.scheduler=flow_euler"):
        step_kernel(unipc, 0.7)


def test_grpo_on_wan_is_on_policy_and_trains(folder, make_trainer, tmp_path):
    trainer = make_trainer("backbone=wan", f"backbone.pretrained={folder}", "backbone.transformer_dtype=fp32",
                           "backbone.text_encoder_dtype=fp32", "backbone.max_sequence_length=16",
                           "num_frames=5", "guidance_scale=5", "algorithm=grpo", "algorithm.eta=0.7",
                           "algorithm.group_size=2", "algorithm.groups_per_step=1", "train_batch_size=2",
                           run_dir=tmp_path / "run")
    trainer.setup()
    plan = trainer.algorithm.plan(0)
    ratio = float(trainer.algorithm.loss(plan.updates[0][0]).numbers["ratio"])
    assert abs(ratio - 1) < 1e-5  # the update recomputes the rollout's own Gaussian
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    assert not trainer.train_step()["skipped"]
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())


@pytest.mark.parametrize("sigma", [0.3, 0.7, 0.95])
def test_the_flow_sde_step_keeps_the_noising_marginals(sigma):
    """For data at one point x0, x_σ = (1 − σ) x0 + σ ε and the true velocity is (x − x0)/σ. The
    step must carry N((1 − σ) x0, σ²) to N((1 − σ') x0, σ'²): its mean exactly, its variance to
    first order in dt (the second-order term bounded here). The step's mean is affine in x, so both follow
    from it at two points."""
    from vader.sampling.stochastic import flow_sde_gaussian

    x0, sigma_next = 0.8, sigma - 0.01
    s, s_next = torch.tensor(sigma), torch.tensor(sigma_next)

    def step(x: float) -> tuple[float, float]:
        x = torch.tensor(x)
        mean, std = flow_sde_gaussian((x - x0) / s, x, s, s_next, 0.7, 0.99)
        return float(mean), float(std)
    (m0, std), (m1, _) = step(0.0), step(1.0)
    slope = m1 - m0
    assert slope * (1 - sigma) * x0 + m0 == pytest.approx((1 - sigma_next) * x0, abs=1e-6)
    # Second order: dt² ((1 + s²/2σ)² − 1) with s² = 0.49 σ/(1 − σ), the noise level squared.
    bound = 0.01 ** 2 * (1 + 0.49 / (1 - sigma) / 2) ** 2
    assert slope ** 2 * sigma ** 2 + std ** 2 == pytest.approx(sigma_next ** 2, abs=bound)


@pytest.mark.slow
def test_grpo_raises_the_held_out_colorfulness_of_the_tiny_wan(tmp_path):
    """Setting `grpo_wan` (tests/learning.py): 30 GRPO steps of 16 videos with the flow SDE step.
    Held-out colorfulness measured with `python -m benchmarks.learning_margins --settings grpo_wan
    --seeds 0 1 2 3 4 5` (torch 2.14.1, 2 threads, 2026-12-06): base 0.0780 -> +0.0005, +0.0000,
    +0.0007, +0.0008, +0.0011, +0.0003 (all 6 improved; mean +0.0006, 0.6 of the reward's std over
    random latents; 60 steps: also 6/6, mean +0.0006); asserted: a majority of seeds 0-2 and a mean
    gain of 0.0002."""
    from tests.learning import SEEDS, assert_learns, reward_folders, train

    folders = reward_folders(tmp_path / "models", ("grpo_wan",))
    outcomes = [train("grpo_wan", folders, seed, tmp_path / f"seed{seed}") for seed in SEEDS]
    assert_learns(outcomes, min_mean_gain=0.0002)


def test_a_long_wan_video_in_windows_trains_and_reports_its_seams(folder, make_trainer, tmp_path):
    """17 frames are 5 latent frames, made in windows of 3 latent frames overlapping by 1: the
    evaluation's seam column looks at the video pairs where those windows meet (rewards/seam.py,
    `temporal` taken from the backbone)."""
    trainer = make_trainer("backbone=wan", f"backbone.pretrained={folder}", "backbone.transformer_dtype=fp32",
                           "backbone.text_encoder_dtype=fp32", "backbone.max_sequence_length=16",
                           "num_frames=17", "guidance_scale=5", "backprop_steps=1", "long.window=3",
                           "long.overlap=1", run_dir=tmp_path / "run")
    trainer.setup()
    seam = trainer.rewards["seam"]
    assert seam.temporal == 4 and seam.seams(17) == [5, 9]
    result = trainer.train()
    assert 0 < result["summary"]["per_model"]["tuned"]["reward/seam"]["mean"] <= 1
