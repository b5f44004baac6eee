"""Windowed generation of long videos (issue 18, first part; vader/sampling/windows.py): window
layout and fusion weights, FreeNoise's noise rescheduling, windows without overlap equal to
generating each window alone, and fused overlaps against plain concatenation at the seams."""
from __future__ import annotations

import pytest
import torch

from rewards.seam import Seam
from tests.conftest import compose_cfg
from vader.build import build
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.windows import FUSIONS, Windows, long_noise

PROMPTS = ["a red circle moves left on a white background", "a blue square moves up on a black background"]


def test_windows_cover_every_frame_and_the_last_one_ends_at_the_end():
    assert Windows(4).spans(12) == [(0, 4), (4, 8), (8, 12)]
    assert Windows(4, 1).spans(10) == [(0, 4), (3, 7), (6, 10)]
    assert Windows(4, 1).spans(11) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    for fusion in FUSIONS:
        w = Windows(4, 2, fusion)
        total = torch.zeros(11)
        for (s, e), weight in zip(w.spans(11), w.weights(11)):
            total[s:e] += weight
        torch.testing.assert_close(total, torch.ones(11))
    none = Windows(4, 2, "none").weights(8)  # each frame from the first window covering it
    assert [w.tolist() for w in none] == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    tri = Windows(4, 2, "triangular").weights(8)
    assert tri[0][2] > tri[1][0] and tri[1][1] > tri[0][3]  # the window a frame is central in wins


@pytest.mark.parametrize("bad, match", [({"window": 0}, "long.window"), ({"window": 4, "overlap": 4}, "long.overlap"),
                                        ({"window": 4, "fusion": "max"}, "long.fusion")])
def test_bad_window_settings_name_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        Windows(**bad)


def test_a_video_shorter_than_a_window_is_refused():
    with pytest.raises(ValueError, match="shorter than one window"):
        Windows(8).spans(6)


def test_long_noise_reuses_each_earlier_block_shuffled():
    w = Windows(4, 1)
    noise = long_noise((2, 3, 10, 2, 2), [5, 6], w)
    torch.testing.assert_close(noise[:, :, :4], make_noise((2, 3, 4, 2, 2), [5, 6]))
    for start in (4, 7):  # blocks of stride 3 copy the frames one window earlier, in another order
        block, earlier = noise[:, :, start:start + 3], noise[:, :, start - 4:start - 1]
        for b in range(2):
            matches = [[torch.equal(block[b, :, i], earlier[b, :, j]) for j in range(3)] for i in range(3)]
            assert all(sum(row) == 1 for row in matches)
    torch.testing.assert_close(long_noise((2, 3, 10, 2, 2), [5, 6], w), noise)  # from the seeds alone


@pytest.fixture(scope="module")
def world():
    backbone = build(compose_cfg("backbone=world", "prompt_fn=world").backbone)
    backbone.to("cpu")
    return backbone


def test_windows_without_overlap_are_each_window_generated_alone(world):
    model = world.trainable_module()
    noise = make_noise(world.latent_shape(2, 16, 32, 32), [3, 4])
    with torch.no_grad():
        long = sample(world, model, PROMPTS, noise, num_inference_steps=6, windows=Windows(8, 0, "none"))
        alone = torch.cat([sample(world, model, PROMPTS, noise[:, :, s:s + 8], num_inference_steps=6)
                           for s in (0, 8)], 2)
    torch.testing.assert_close(long, alone, atol=1e-5, rtol=1e-5)


def test_fused_overlaps_hide_the_seams_that_concatenation_shows(world):
    """24 frames (3 windows of 8) of the world model, 10 steps, Farneback flow. Measured: plain
    concatenation of independently drawn windows scores 0.19 and 0.27 on seam; triangular
    fusion over 2 overlapping frames with FreeNoise's noise 0.97 and 0.91 (uniform fusion 0.96,
    0.76; seams where vader.sampling.windows puts them, measured 2026-12-06). On the tiny random backbone every mode scores about 1: it moves nothing across
    frames, so it has no seams to hide (docs/long_video.md)."""
    model = world.trainable_module()
    with torch.no_grad():
        parts = [make_noise(world.latent_shape(2, 8, 32, 32), [10 + k, 20 + k]) for k in range(3)]
        naive = sample(world, model, PROMPTS, torch.cat(parts, 2), num_inference_steps=10,
                       windows=Windows(8, 0, "none"))
        fused_windows = Windows(8, 2, "triangular")
        fused = sample(world, model, PROMPTS, long_noise(world.latent_shape(2, 24, 32, 32), [1, 2], fused_windows),
                       num_inference_steps=10, windows=fused_windows)
    naive_seam = Seam(window=8, overlap=0, flow="farneback")(world.decode(naive).float(), PROMPTS)[0]
    fused_seam = Seam(window=8, overlap=2, flow="farneback")(world.decode(fused).float(), PROMPTS)[0]
    assert (fused_seam > naive_seam + 0.3).all(), (naive_seam, fused_seam)


def test_gradients_reach_the_lora_through_every_window(world):
    model = world.trainable_module()
    lora = [p for p in model.parameters() if p.requires_grad]
    noise = make_noise(world.latent_shape(1, 16, 32, 32), [7])
    latents = sample(world, model, PROMPTS[:1], noise, num_inference_steps=4, cutoff=3,
                     windows=Windows(8, 2, "triangular"))
    latents.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    for p in lora:
        p.grad = None


def test_windowed_k1_lora_gradient_matches_a_hand_written_reference():
    """Must-show 2: the LoRA gradient of a K = 1 step on 3 windows (tiny backbone, 12 frames in
    windows of 4 overlapping by 1, triangular fusion, checkpointed per window) equals the same
    computation written out by hand here: windows listed explicitly, triangular weights typed in,
    guidance and the DDIM steps done step by step, no checkpointing."""
    from backbones.tiny import tiny

    backbone = tiny(seed=0)
    model = backbone.trainable_module()
    with torch.no_grad():  # LoRA B starts at zero; give it weights so every LoRA matrix gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    prompts, steps, scale = ["a red balloon"], 3, 7.5
    noise = make_noise(backbone.latent_shape(1, 12, 16, 16), [7])

    def loss_of(latents):
        return backbone.decode(latents).float().mean(dim=(0, 1, 3, 4)).pow(2).sum()  # frames differ

    latents = sample(backbone, model, prompts, noise, num_inference_steps=steps, guidance_scale=scale,
                     cutoff=steps - 1, gradient_checkpointing=True, windows=Windows(4, 1, "triangular"))
    ours = torch.autograd.grad(loss_of(latents), params)

    spans = [(0, 4), (3, 7), (6, 10), (8, 12)]  # stride 3; the last moved back to end at frame 12
    raw = torch.tensor([1.0, 2.0, 2.0, 1.0])  # min(i + 1, window - i)
    total = torch.zeros(12)
    for s, e in spans:
        total[s:e] += raw
    cond = torch.cat([backbone.encode_prompts([""]), backbone.encode_prompts(prompts)])
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(i == steps - 1):
            x_in = scheduler.scale_model_input(x, t)
            out = 0
            for s, e in spans:
                window = x_in[:, :, s:e]
                uncond = backbone.predict(model, window, t, cond[:1])
                text = backbone.predict(model, window, t, cond[1:])
                guided = uncond + scale * (text - uncond)
                weight = torch.zeros(12)
                weight[s:e] = raw / total[s:e]
                out = out + torch.nn.functional.pad(guided, (0, 0, 0, 0, s, 12 - e)) * weight.view(1, 1, -1, 1, 1)
            x = scheduler.step(out, t, x).prev_sample
    reference = torch.autograd.grad(loss_of(x), params)
    largest = max(g.abs().max().item() for g in reference)
    assert largest > 0 and sum(bool(g.abs().max() > 0) for g in reference) > 0.9 * len(params)
    for got, want in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * largest)


def test_grpo_trains_on_long_videos_in_windows(make_trainer, tmp_path):
    """GRPO's rollout and its update predict the long latent window by window alike: before any
    update the recomputed log-probabilities equal the rollout's (ratio 1), and a step trains."""
    trainer = make_trainer("algorithm=grpo", "algorithm.group_size=2", "algorithm.groups_per_step=1",
                           "train_batch_size=2", "num_frames=10", "long.window=4", "long.overlap=1",
                           run_dir=tmp_path / "r")
    trainer.setup()
    plan = trainer.algorithm.plan(0)
    assert trainer.algorithm.traj.latents.shape[3] == 10  # (steps + 1, B, C, T, h, w)
    numbers = trainer.algorithm.loss(plan.updates[0][0]).numbers
    assert abs(float(numbers["ratio"]) - 1) < 1e-5
    before = {k: v.clone() for k, v in trainer.backbone.lora_state_dict().items()}
    record = trainer.train_step()
    assert not record["skipped"]
    assert any((v - before[k]).abs().max() > 0 for k, v in trainer.backbone.lora_state_dict().items())
