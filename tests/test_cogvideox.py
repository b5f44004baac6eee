"""CogVideoX behind the backbone protocol (issue 19; backbones/cogvideox.py), on tiny random
checkpoints written in the published layout (tests/tiny_cogvideox.py) in both kinds: the 2B's
(sin-cos positions) and the 5B's (3D rotary embeddings). Our sampler against diffusers'
CogVideoXPipeline, the frame rules and exact decoding, the v-prediction forward process, DDIM at
zero terminal SNR, and every algorithm for a few steps. The LoRA contract, diffusers'
`load_lora_weights` and the offline error: tests/test_dit.py."""
from __future__ import annotations

import pytest
import torch

from backbones.cogvideox import cogvideox
from tests.tiny_cogvideox import TEXT_LENGTH, write_cogvideox
from vader.sampling.differentiable import make_noise, sample

PROMPTS = ["a red circle moves left", "a blue square on a black background"]
F32 = dict(transformer_dtype="fp32", vae_dtype="fp32", text_encoder_dtype="fp32")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cogvideox")
    return {"2b": write_cogvideox(root / "2b"), "5b": write_cogvideox(root / "5b", rotary=True)}


@pytest.fixture(scope="module")
def backbone(folders):
    return cogvideox(str(folders["2b"]), **F32)


def pipeline_latents(pipe, noise, steps, guidance, output_type="latent", frames=9, size=(16, 16)):
    """CogVideoXPipeline's result for our noise; the pipeline's latents are (B, T, C, h, w)."""
    out = pipe(PROMPTS[:len(noise)], num_inference_steps=steps, guidance_scale=guidance, height=size[0],
               width=size[1], num_frames=frames, latents=noise.permute(0, 2, 1, 3, 4).clone(),
               max_sequence_length=TEXT_LENGTH, output_type=output_type).frames
    return out.permute(0, 2, 1, 3, 4) if output_type == "latent" else out


@pytest.mark.parametrize("kind", ["2b", "5b"])
@pytest.mark.parametrize("steps", [2, 5])
def test_our_sampler_matches_cogvideox_pipeline(folders, kind, steps):
    """Same noise, guidance 6 as CogVideoXPipeline runs it (one pass on the doubled batch): latents
    within 1e-5, and the decoded frames too; the 5B kind at a non-square size, where the rotary
    embeddings' crop region matters."""
    from diffusers import CogVideoXPipeline

    ours_backbone = cogvideox(str(folders[kind]), **F32)
    pipe = CogVideoXPipeline.from_pretrained(folders[kind])
    pipe.set_progress_bar_config(disable=True)
    size = (16, 16) if kind == "2b" else (32, 16)
    noise = make_noise(ours_backbone.latent_shape(2, 9, *size), [3, 4])
    with torch.no_grad():
        ours = sample(ours_backbone, ours_backbone.trainable_module(), PROMPTS, noise,
                      num_inference_steps=steps, guidance_scale=6.0)
        theirs = pipeline_latents(pipe, noise, steps, 6.0, size=size)
        frames = pipeline_latents(pipe, noise, steps, 6.0, "pt", size=size)
        decoded = ours_backbone.decode(ours)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert decoded.shape == frames.shape == (2, 9, 3, *size)
    torch.testing.assert_close(decoded, frames.float(), atol=1e-5, rtol=1e-5)


def test_frames_come_in_eights_plus_one(backbone):
    assert backbone.latent_shape(1, 17, 32, 16) == (1, 4, 5, 4, 2)
    with pytest.raises(ValueError, match="num_frames=8: .* 4k \\+ 1 frames \\(e.g. num_frames=9\\)"):
        backbone.check_video(8, 16, 16)
    with pytest.raises(ValueError, match="num_frames=13: .* 8k \\+ 1 frames \\(e.g. num_frames=17"):
        backbone.check_video(13, 16, 16)
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone.check_video(9, 24, 16)


def test_decoding_some_frames_decodes_the_odd_prefix_exactly(backbone):
    """The documented rule: the shortest odd latent prefix of at least three frames reaching the
    last frame asked for gives exactly those frames of a whole decode; an even prefix, or the
    first latent frame alone, would not (their chunks differ)."""
    z = torch.randn(1, 4, 7, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = backbone.decode(z)
        for index in ([0], [3], [4, 8], [9], [0, 16], [24]):
            picked = backbone.decode(z, torch.tensor(index))
            torch.testing.assert_close(picked, whole[:, index], atol=0, rtol=0)
        for prefix, frames in ((1, 1), (2, 8), (4, 16)):
            other = backbone.vae.decode(z[:, :, :prefix] / backbone.scaling_factor).sample
            assert (other.permute(0, 2, 1, 3, 4) / 2 + 0.5 - whole[:, :frames]).abs().max() > 1e-2


def test_v_prediction_target_recovers_the_clean_latent(backbone):
    """A perfect v predictor turns x_t back into x0: x0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v, on
    CogVideoX's shifted noise levels (ᾱ at t = 999 is 0: zero terminal SNR)."""
    x0, eps = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([250, 999])
    xt, v = backbone.add_noise(x0, eps, t), backbone.training_target(x0, eps, t)
    alpha = backbone.make_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    assert float(alpha[1]) == 0.0
    torch.testing.assert_close(alpha ** 0.5 * xt - (1 - alpha) ** 0.5 * v, x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [3, 6, 9, 15])
def test_ddim_with_eta_1_stays_finite_at_zero_terminal_snr(backbone, steps):
    """The first step (ᾱ_t = 0) at eta = 1: diffusers' DDIMScheduler gives NaN at these step counts
    on CogVideoX's schedule; ours stays finite and keeps DDIM's std to float precision."""
    from diffusers import DDIMScheduler

    ours = backbone.make_scheduler()
    plain = DDIMScheduler.from_config(ours.config)
    plain.alphas_cumprod, plain.final_alpha_cumprod = ours.alphas_cumprod, ours.final_alpha_cumprod
    x, v, noise = (torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for s in (ours, plain):
        s.set_timesteps(steps)
    t = ours.timesteps[0]
    assert torch.isnan(plain.step(v, t, x, eta=1.0, variance_noise=noise).prev_sample).any()
    assert torch.isfinite(ours.step(v, t, x, eta=1.0, variance_noise=noise).prev_sample).all()
    prev = int(ours.timesteps[1])
    torch.testing.assert_close(ours._get_variance(t, prev), plain._get_variance(t, prev), rtol=1e-6, atol=0)


@pytest.mark.parametrize("algorithm", ["reward_grad", "sft", "dpo", "grpo"])
def test_algorithms_train_on_cogvideox(folders, make_trainer, tmp_path, algorithm):
    """A few steps of each algorithm on the tiny CogVideoX: the LoRA changes and the run evaluates;
    GRPO's update starts on-policy (ratio 1: it recomputes the rollout's own DDIM Gaussian)."""
    from tests.video_data import write_clip_folder, write_pairs

    data = {"sft": ["algorithm=sft", "dataset=folder", "data.num_workers=0",
                    f"dataset.path={write_clip_folder(tmp_path / 'clips', ['red', 'blue'], frames=9)}"],
            "dpo": ["algorithm=dpo", "dataset=pairs", "data.num_workers=0",
                    f"dataset.path={write_pairs(tmp_path / 'pairs', ['red', 'blue'], frames=9)}"],
            "grpo": ["algorithm=grpo", "algorithm.eta=1.0", "algorithm.group_size=2",
                     "algorithm.groups_per_step=1", "train_batch_size=2"]}.get(algorithm, [])
    trainer = make_trainer("backbone=cogvideox", f"backbone.pretrained={folders['2b']}",
                           "backbone.transformer_dtype=fp32", "backbone.vae_dtype=fp32",
                           "backbone.text_encoder_dtype=fp32", "num_frames=9", "guidance_scale=5",
                           "backprop_steps=1", *data, run_dir=tmp_path / "run")
    trainer.setup()
    if algorithm == "grpo":
        plan = trainer.algorithm.plan(0)
        assert abs(float(trainer.algorithm.loss(plan.updates[0][0]).numbers["ratio"]) - 1) < 1e-5
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    result = trainer.train()
    assert result["summary"]["settings"]["num_frames"] == 9
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())
