"""Weight-free rewards: shapes, gradients, known values, input checks, and every shipped YAML."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.brightness import Brightness
from rewards.colorfulness import Colorfulness
from rewards.contrast import Contrast
from vader.protocols import Reward

REWARDS = [Brightness, Colorfulness, Contrast]
# The weight-free rewards' YAMLs build as shipped; learned rewards name hub models, and their own
# tests build them from tiny local folders.
YAMLS = [Path(__file__).parents[1] / "conf" / "reward_fn" / f"{name}.yaml"
         for name in ("brightness", "colorfulness", "contrast")]
B, T, H, W = 2, 3, 8, 8


def solid(value: float | tuple[float, float, float]) -> torch.Tensor:
    """A `(B, T, 3, H, W)` video with every pixel the same colour."""
    rgb = torch.tensor(value if isinstance(value, tuple) else (value,) * 3)
    return rgb.view(1, 1, 3, 1, 1).expand(B, T, 3, H, W).clone()


def checkerboard(a: tuple[float, float, float], b: tuple[float, float, float]) -> torch.Tensor:
    mask = ((torch.arange(H).view(H, 1) + torch.arange(W).view(1, W)) % 2).bool()
    frame = torch.where(mask, torch.tensor(b).view(3, 1, 1), torch.tensor(a).view(3, 1, 1))
    return frame.expand(B, T, 3, H, W).clone()


def score(reward, frames: torch.Tensor) -> torch.Tensor:
    return reward(frames, ["a prompt"] * frames.shape[0])[0]


@pytest.mark.parametrize("cls", REWARDS)
def test_shape_dtype_info(cls):
    frames = torch.rand(B, T, 3, H, W, dtype=torch.float64)
    rewards, info = cls()(frames, ["a", "b"])
    assert rewards.shape == (B,)
    assert rewards.dtype == frames.dtype
    # numbers as detached one-element tensors: no wait for the device inside a training step
    assert info and all(isinstance(v, torch.Tensor) and v.numel() == 1 and not v.requires_grad
                        for v in info.values())


@pytest.mark.parametrize("cls", REWARDS)
@pytest.mark.parametrize("start", ["random", "gray"])
def test_gradient_reaches_frames(cls, start):
    # Gray is where sqrt-based rewards have an infinite gradient without the epsilon; the tiny
    # perturbation makes the gradient non-zero there too (it is exactly 0 on a flat frame).
    base = torch.rand(B, T, 3, H, W) if start == "random" else solid(0.5) + 1e-3 * torch.randn(B, T, 3, H, W)
    frames = base.requires_grad_(True)
    score(cls(), frames).sum().backward()
    assert frames.grad is not None
    assert torch.isfinite(frames.grad).all()
    assert frames.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [Colorfulness, Contrast])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradient_finite_on_flat_video(cls, dtype):
    # Half precision as under autocast: an epsilon that underflows there would give NaN.
    frames = solid(0.5).to(dtype).requires_grad_(True)
    rewards = score(cls(), frames)
    rewards.sum().backward()
    assert rewards.dtype == dtype
    assert torch.isfinite(frames.grad).all()


def test_brightness_values():
    assert torch.allclose(score(Brightness(), solid(1.0)), torch.ones(B))
    assert torch.allclose(score(Brightness(), solid(0.0)), torch.zeros(B))
    # Rec. 601 weights: pure green is brighter than pure red, which is brighter than pure blue.
    red, green, blue = (score(Brightness(), solid(c)) for c in [(1., 0., 0.), (0., 1., 0.), (0., 0., 1.)])
    assert torch.allclose(red, torch.full((B,), 0.299))
    assert torch.allclose(green, torch.full((B,), 0.587))
    assert torch.allclose(blue, torch.full((B,), 0.114))


def test_brightness_is_per_video():
    frames = torch.cat([solid(0.2)[:1], solid(0.8)[:1]])
    assert torch.allclose(score(Brightness(), frames), torch.tensor([0.2, 0.8]))


def test_colorfulness_values():
    assert torch.allclose(score(Colorfulness(), solid(0.5)), torch.zeros(B), atol=1e-6)
    red_green = score(Colorfulness(), checkerboard((1., 0., 0.), (0., 1., 0.)))
    gray_checker = score(Colorfulness(), checkerboard((0., 0., 0.), (1., 1., 1.)))
    assert (red_green > 0.5).all()
    assert torch.allclose(gray_checker, torch.zeros(B), atol=1e-6)
    # Solid red: std term 0; rg = 1, yb = 0.5 -> 0.3 * sqrt(1.25).
    assert torch.allclose(score(Colorfulness(), solid((1., 0., 0.))), torch.full((B,), 0.3 * 1.25 ** 0.5), atol=1e-5)


def test_contrast_values():
    assert torch.allclose(score(Contrast(), solid(0.5)), torch.zeros(B), atol=1e-6)
    # Half black, half white: luma std is exactly 0.5 (population std).
    bw = score(Contrast(), checkerboard((0., 0., 0.), (1., 1., 1.)))
    assert torch.allclose(bw, torch.full((B,), 0.5), atol=1e-5)


def test_contrast_is_per_frame_not_across_frames():
    # Each frame flat but frames differ: per-frame contrast is 0, a global std would not be.
    frames = torch.stack([solid(0.0)[:, 0], solid(1.0)[:, 0]], dim=1)
    assert torch.allclose(score(Contrast(), frames), torch.zeros(B), atol=1e-6)


@pytest.mark.parametrize("cls", REWARDS)
@pytest.mark.parametrize("shape", [(B, 3, 4, H, W), (T, 3, H, W), (B, T, 4, H, W)])
def test_bad_shape_raises(cls, shape):
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        cls()(torch.rand(shape), ["a"] * shape[0])


@pytest.mark.parametrize("cls", REWARDS)
def test_prompt_count_mismatch_raises(cls):
    with pytest.raises(ValueError, match="prompts"):
        cls()(torch.rand(B, T, 3, H, W), ["only one"])


@pytest.mark.parametrize("cls", REWARDS)
def test_frames_attribute_stored(cls):
    assert cls().frames == "all"
    assert cls(frames=4).frames == 4
    assert cls(frames="random").frames == "random"


def test_every_reward_has_a_yaml():
    assert {p.stem for p in YAMLS} >= {"brightness", "colorfulness", "contrast"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_yaml_instantiates_to_a_reward(path):
    reward = instantiate(OmegaConf.load(path))
    assert isinstance(reward, Reward)
    assert reward.frames in ("all", "random") or isinstance(reward.frames, int)
    assert isinstance(reward.differentiable, bool)
