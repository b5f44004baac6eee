"""The truncated-backprop sampler against independent reference computations."""
from __future__ import annotations

import random

import pytest
import torch

from backbones.tiny import tiny
from rewards.colorfulness import Colorfulness
from vader.sampling.differentiable import cutoff_index, dead_steps, make_noise, sample

STEPS, GUIDANCE = 3, 3.0
PROMPTS = ["a dog running on the beach", "a red car"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    b = tiny(channels=(16, 32), vae_channels=(16, 32), gradient_checkpointing=True)
    # Non-zero LoRA B (peft starts it at zero), so both LoRA factors get gradients.
    with torch.no_grad():
        for name, p in b.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return b


def lora_grads(backbone, loss):
    params = [p for p in backbone.unet.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def objective(backbone, latents):
    rewards, _ = Colorfulness()(backbone.decode(latents), PROMPTS)
    return -rewards.sum()


def reference_latents(backbone, noise, detach_before_last: bool):
    """DDIM (eta=0) written out from the scheduler's alphas, with plain autograd and no
    checkpointing; `detach_before_last` cuts the chain before the last step."""
    sched = backbone.make_scheduler()
    sched.set_timesteps(STEPS)
    alphas = sched.alphas_cumprod
    stride = sched.config.num_train_timesteps // STEPS
    cond = torch.cat([backbone.encode_prompts([""] * len(PROMPTS)), backbone.encode_prompts(PROMPTS)])
    x = noise
    for i, t in enumerate(sched.timesteps):
        if detach_before_last and i == STEPS - 1:
            x = x.detach()
        out = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample
        uncond, text = out.chunk(2)
        eps = uncond + GUIDANCE * (text - uncond)
        a_t = alphas[t]
        a_prev = alphas[t - stride] if t - stride >= 0 else alphas[0]  # set_alpha_to_one=False
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def ours(backbone, noise, cutoff, checkpointing=True):
    return sample(backbone, backbone.unet, PROMPTS, noise, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, cutoff=cutoff, gradient_checkpointing=checkpointing)


@pytest.fixture(scope="module")
def noise(backbone):
    return make_noise(backbone.latent_shape(len(PROMPTS), 4, 16, 16), [3, 4])


def assert_grads_close(got, expected):
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_forward_matches_reference(backbone, noise):
    with torch.no_grad():
        torch.testing.assert_close(ours(backbone, noise, None), reference_latents(backbone, noise, False),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_all_steps_equals_full_backprop(backbone, noise, checkpointing):
    expected = lora_grads(backbone, objective(backbone, reference_latents(backbone, noise, False)))
    got = lora_grads(backbone, objective(backbone, ours(backbone, noise, 0, checkpointing)))
    assert_grads_close(got, expected)


def test_last_step_equals_detached_chain(backbone, noise):
    expected = lora_grads(backbone, objective(backbone, reference_latents(backbone, noise, True)))
    got = lora_grads(backbone, objective(backbone, ours(backbone, noise, STEPS - 1)))
    assert_grads_close(got, expected)
    full = lora_grads(backbone, objective(backbone, ours(backbone, noise, 0)))
    # the two truncations really differ, so the comparisons above can tell them apart
    assert max((a - b).abs().max().item() for a, b in zip(full, got)) > 1e-4 * max(
        a.abs().max().item() for a in full)


@pytest.mark.parametrize("cutoff", [0, 1, 2])
def test_no_graph_before_cutoff(backbone, noise, cutoff):
    seen = []
    hook = backbone.unet.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    try:
        latents = ours(backbone, noise, cutoff)
    finally:
        hook.remove()
    assert seen == [False] * cutoff + [True] * (STEPS - cutoff)
    assert latents.requires_grad


def test_cutoff_modes():
    assert cutoff_index("last", 10, backprop_steps=1) == 9
    assert cutoff_index("last", 10, backprop_steps=10) == 0
    assert cutoff_index("specific", 10, backprop_step=4) == 4
    draws = {cutoff_index("rand", 10, rng=random.Random(i)) for i in range(200)}
    assert draws == set(range(10))
    a = [cutoff_index("rand", 10, rng=random.Random("0-5-0")) for _ in range(3)]
    assert len(set(a)) == 1  # same seed string, same cutoff on every process


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="last", num_steps=5, backprop_steps=6), "backprop_steps=6"),
    (dict(mode="last", num_steps=5, backprop_steps=0), "backprop_steps=0"),
    (dict(mode="specific", num_steps=5, backprop_step=None), "backprop_step"),
    (dict(mode="specific", num_steps=5, backprop_step=5), "backprop_step"),
    (dict(mode="first", num_steps=5), "backprop_mode"),
])
def test_bad_backprop_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cutoff_index(**kwargs)


def test_noise_depends_only_on_seed():
    shape = (3, 4, 2, 4, 4)
    both = make_noise(shape, [7, 8, 9])
    torch.testing.assert_close(make_noise((1, 4, 2, 4, 4), [8])[0], both[1], rtol=0, atol=0)


def test_identity_steps_are_found_and_skipped_when_counting_k():
    from diffusers import DDIMScheduler

    from backbones.tiny import SCHEDULER_CONFIG
    linspace = lambda: DDIMScheduler.from_config({**SCHEDULER_CONFIG, "timestep_spacing": "linspace"})
    leading = lambda: DDIMScheduler.from_config(SCHEDULER_CONFIG)
    assert dead_steps(leading, 10) == frozenset()
    dead = dead_steps(linspace, 10)
    assert dead == {9}  # linspace ends at t=0, where DDIM returns its input unchanged
    assert cutoff_index("last", 10, backprop_steps=1, dead=dead) == 8
    assert cutoff_index("last", 10, backprop_steps=10, dead=dead) == 0
    assert {cutoff_index("rand", 10, rng=random.Random(i), dead=dead) for i in range(200)} == set(range(9))
