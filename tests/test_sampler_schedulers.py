"""The sampler's LoRA gradients for every scheduler a backbone can choose (`scheduler: ddim |
dpmsolver | euler`), with and without guidance, through the last K = 1, 2 and all steps:
checkpointing on, checkpointing off, and a plain autograd chain written out here (the scheduler
driven step by step, no checkpointing, no `no_grad`, cut with `detach()` where gradients
start) must all agree. Euler's `scale_model_input` reads state that `step`
advances, which is what a checkpoint's recomputation in backward can get wrong; DDIM's and
DPM-Solver's do not, so only Euler would catch that. tests/test_sampler.py pins DDIM against
its own closed-form arithmetic."""
from __future__ import annotations

import pytest
import torch

from backbones.tiny import tiny
from vader.sampling.differentiable import cutoff_index, dead_steps, make_noise, sample

STEPS = 4
VIDEO = (2, 8, 8)  # frames, height, width: small, the sampler is what is tested
PROMPTS = ["a dog running on the beach", "a red car"]
SCHEDULERS = ("ddim", "dpmsolver", "euler")


def build(scheduler: str, checkpoint_blocks: bool = False):
    torch.manual_seed(0)
    backbone = tiny(channels=(16, 32), vae_channels=(16, 32), scheduler=scheduler,
                    checkpoint_blocks=checkpoint_blocks)
    # peft starts LoRA B at zero, which gives LoRA A a zero gradient: perturb B, seeded.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(backbone.unet.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=g)
    return backbone


@pytest.fixture(scope="module", params=SCHEDULERS)
def backbone(request):
    return build(request.param)


@pytest.fixture(scope="module")
def noise(backbone):
    return make_noise(backbone.latent_shape(len(PROMPTS), *VIDEO), [3, 4])


def objective(latents: torch.Tensor) -> torch.Tensor:
    """A fixed random linear function of the latents: every latent entry gets a gradient."""
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    return (latents * weights).sum()


def lora_grads(backbone, latents) -> torch.Tensor:
    params = [p for p in backbone.unet.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(objective(latents), params)])


def reference_latents(backbone, noise, cutoff: int, guidance: float) -> torch.Tensor:
    """The scheduler driven by hand with plain autograd: no checkpointing, the guidance passes
    as two calls, the chain cut with `detach()` at `cutoff`. The model outputs of the steps
    before it are cut too: DPM-Solver++ keeps them for its later steps, and truncated backprop
    treats everything before the cutoff as constant."""
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(STEPS)
    text = backbone.encode_prompts(PROMPTS)
    empty = backbone.encode_prompts([""] * len(PROMPTS))
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        if i == cutoff:
            x = x.detach()
        x_in = scheduler.scale_model_input(x, t)
        out = backbone.unet(x_in, t, encoder_hidden_states=text).sample
        if guidance > 1:
            uncond = backbone.unet(x_in, t, encoder_hidden_states=empty).sample
            out = uncond + guidance * (out - uncond)
        x = scheduler.step(out if i >= cutoff else out.detach(), t, x).prev_sample
    return x


def ours(backbone, noise, cutoff: int, guidance: float, checkpointing: bool) -> torch.Tensor:
    return sample(backbone, backbone.unet, PROMPTS, noise, num_inference_steps=STEPS,
                  guidance_scale=guidance, cutoff=cutoff, gradient_checkpointing=checkpointing)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["no-guidance", "guidance"])
@pytest.mark.parametrize("k", [1, 2, STEPS], ids=["K1", "K2", "Kall"])
def test_checkpointing_on_off_and_plain_chain_agree(backbone, noise, k, guidance):
    cutoff = cutoff_index("last", STEPS, k, dead=dead_steps(backbone.make_scheduler, STEPS))
    expected = lora_grads(backbone, reference_latents(backbone, noise, cutoff, guidance))
    plain = lora_grads(backbone, ours(backbone, noise, cutoff, guidance, checkpointing=False))
    checkpointed = lora_grads(backbone, ours(backbone, noise, cutoff, guidance, checkpointing=True))
    assert expected.norm() > 0
    # On and off run the same arithmetic (measured: bitwise equal); the plain chain differs only
    # in running the guidance passes as two calls (measured: bitwise equal without guidance, at
    # most 2.5e-6 relative with it). The bug this guards: Euler, checkpointed, 0.27 at K=2.
    assert relative(checkpointed, plain) < 1e-6, "checkpointing changed the gradients"
    assert relative(plain, expected) < 1e-5
    assert relative(checkpointed, expected) < 1e-5


def test_the_comparison_can_tell_truncations_apart(backbone, noise):
    """The control: K=1 and K=2 give different gradients, well beyond the tolerances above."""
    dead = dead_steps(backbone.make_scheduler, STEPS)
    one, two = (lora_grads(backbone, ours(backbone, noise, cutoff_index("last", STEPS, k, dead=dead),
                                          3.0, checkpointing=True)) for k in (1, 2))
    assert relative(one, two) > 1e-3


def test_checkpoint_blocks_with_euler():
    """Per-layer checkpointing inside the UNet (`checkpoint_blocks`) instead of whole steps:
    the layers get the already-scaled input from outside their checkpoints, so Euler's
    gradients match the plain chain of the same weights without it."""
    blocks, plain = build("euler", checkpoint_blocks=True), build("euler")
    assert blocks.checkpoint_blocks and not plain.checkpoint_blocks
    noise = make_noise(plain.latent_shape(len(PROMPTS), *VIDEO), [3, 4])
    for k in (1, 2):
        cutoff = cutoff_index("last", STEPS, k)
        expected = lora_grads(plain, reference_latents(plain, noise, cutoff, 3.0))
        got = lora_grads(blocks, ours(blocks, noise, cutoff, 3.0, checkpointing=True))
        assert relative(got, expected) < 1e-5
