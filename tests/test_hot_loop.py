"""What a training step does besides the arithmetic: how often it waits for the device (each
`.item()`, `float(tensor)` or `.tolist()` is one wait on a GPU), how often it runs the text
encoder, and which constants it rebuilds. The default (tiny, colorfulness) config."""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from backbones.tiny import tiny
from rewards.common import resize_crop_normalize
from tests.conftest import ROOT
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.seeds import ETA, generator_seed


def count_reads(monkeypatch) -> collections.Counter:
    """Counts of the calls, made by the project's own code (not torch's or diffusers'), of the
    Tensor methods that copy a value to the host, and so wait for the device."""
    counts: collections.Counter = collections.Counter()
    # A virtual environment inside the checkout (`python -m venv .venv`) holds torch's and
    # accelerate's code under ROOT too: installed packages are not the project's code.
    installed = Path(sys.prefix).resolve()
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if caller.is_relative_to(ROOT) and not caller.is_relative_to(ROOT / "tests") \
                    and not caller.is_relative_to(installed):
                counts[_name] += 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_training_step_reads_the_device_twice(make_trainer, monkeypatch, accumulation):
    """One read decides whether to apply the update (every process must agree); one brings the
    logged numbers, reward infos and gradient norm included, to the host. Not one per reward
    number, per micro-step or for the gradient norm."""
    t = make_trainer(f"gradient_accumulation_steps={accumulation}")
    t.setup()
    t.train_step()  # the first step may do one-off work
    counts = count_reads(monkeypatch)
    record = t.train_step()
    monkeypatch.undo()
    assert dict(counts) == {"item": 1, "tolist": 1}
    assert isinstance(record["reward_info/colorfulness_mean"], float)
    assert isinstance(record["grad_norm"], float) and record["grad_norm"] > 0
    assert record["reward_info/colorfulness_mean"] == pytest.approx(record["reward"], rel=1e-6)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_text_encoder_runs_once_per_micro_step(make_trainer, accumulation):
    """The prompts are encoded each micro-step; guidance's empty prompt only once."""
    t = make_trainer(f"gradient_accumulation_steps={accumulation}")
    t.setup()
    assert t.cfg.guidance_scale > 1
    t.train_step()
    calls = []
    hook = t.backbone.text_encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        t.train_step()
    finally:
        hook.remove()
    assert len(calls) == accumulation


def test_the_empty_prompt_cache_follows_the_text_encoder():
    backbone = tiny(channels=(16, 32), vae_channels=(16, 32))
    first = backbone.encode_prompts(["", ""])
    assert backbone.encode_prompts(["", ""]) is first  # cached
    torch.testing.assert_close(first, backbone._encode(["", ""]), rtol=0, atol=0)
    assert backbone.encode_prompts([""]).shape[0] == 1  # per batch size
    # Weights changed in place (an optimizer step, load_state_dict): encoded again.
    with torch.no_grad():
        next(backbone.text_encoder.parameters()).mul_(1.5)
    changed = backbone.encode_prompts(["", ""])
    assert not torch.equal(changed, first)
    torch.testing.assert_close(changed, backbone._encode(["", ""]), rtol=0, atol=0)
    # Another dtype: encoded again, in it.
    backbone.text_encoder.to(torch.float64)
    assert backbone.encode_prompts(["", ""]).dtype == torch.float64
    # A trainable text encoder is never cached.
    backbone.text_encoder.requires_grad_(True)
    assert backbone.encode_prompts(["", ""]) is not backbone.encode_prompts(["", ""])


def test_normalisation_constants_are_built_once(monkeypatch):
    images = torch.rand(2, 3, 20, 24)
    expected = resize_crop_normalize(images, 16, 16, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    got = resize_crop_normalize(images, 16, 16, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    monkeypatch.undo()
    assert made == []
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_eta_noise_on_a_cpu_is_the_cpu_generators():
    """DDIM with eta > 0: the per-step noise is drawn on the latents' device; on a CPU those are
    the numbers a CPU generator per video and step gives (vader.sampling.seeds: purpose ETA), as before."""
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    backbone = tiny(channels=(16, 32), vae_channels=(16, 32))
    prompts, seeds, steps = ["a red car", "a dog"], [3, 4], 3
    noise = make_noise(backbone.latent_shape(2, 2, 8, 8), seeds)
    with torch.no_grad():
        got = sample(backbone, backbone.unet, prompts, noise, num_inference_steps=steps,
                     guidance_scale=1.0, eta=0.5, step_seeds=seeds)
        scheduler = backbone.make_scheduler()
        assert isinstance(scheduler, DDIMScheduler)
        scheduler.set_timesteps(steps)
        x, cond = noise, backbone.encode_prompts(prompts)
        for i, t in enumerate(scheduler.timesteps):
            step_noise = torch.stack([
                torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(generator_seed(ETA, s, i)))
                for s in seeds])
            out = backbone.unet(x, t, encoder_hidden_states=cond).sample
            x = scheduler.step(out, t, x, eta=0.5, variance_noise=step_noise).prev_sample
        deterministic = sample(backbone, backbone.unet, prompts, noise, num_inference_steps=steps,
                               guidance_scale=1.0, step_seeds=seeds)
    torch.testing.assert_close(got, x, rtol=0, atol=0)
    assert not torch.allclose(got, deterministic)  # the noise really entered
