"""The shapes-world judge and the two world rewards: the judge reads clean renders of every scene
(and slightly noisy or blurred ones) right, refuses a prompt that changes any one attribute, and
the soft reward ranks the true prompt above every one-attribute change, with finite gradients.

Small tensors: the module runs torch on one thread, which on a busy CPU is several times faster
than two threads waiting on each other."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.world_alignment import WorldAlignment
from rewards.world_judge import WorldJudge
from vader.protocols import Reward
from vader.world.grammar import ATTRIBUTES, BACKGROUNDS, COLOURS, MOTIONS, SHAPES, scenes
from vader.world.judge import judge, read
from vader.world.render import render

VALUES = {"background": list(BACKGROUNDS), "colour": list(COLOURS), "shape": list(SHAPES),
          "motion": list(MOTIONS)}
CONF = Path(__file__).parents[1] / "conf" / "reward_fn"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clean():
    """Every scene rendered with seed 0, (324, 8, 3, 32, 32), and its prompts."""
    return torch.stack([render(s, 0) for s in scenes()]), [s.prompt for s in scenes()]


def accuracy(frames: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    verdicts = judge(frames, prompts)
    return {a: float(verdicts[a].float().mean()) for a in (*ATTRIBUTES, "all")}


def blur(frames: torch.Tensor) -> torch.Tensor:
    """A mild blur: the 3x3 binomial kernel (std 0.7 pixel), edges replicated."""
    p = F.pad(frames.flatten(0, 1), (1, 1, 1, 1), mode="replicate")
    p = (p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]) / 4
    p = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4
    return p.view(frames.shape)


def changed(scene, attribute: str, value: str) -> str:
    return dataclasses.replace(scene, **{attribute: value}).prompt


# --- the judge ---------------------------------------------------------------------------------

def test_judge_reads_every_clean_render(clean):
    frames, prompts = clean
    seed1 = torch.stack([render(s, 1) for s in scenes()])
    acc = accuracy(torch.cat([frames, seed1]), prompts * 2)
    print(f"clean 32x32x8, 2 seeds x 324 scenes: {acc}")
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_judge_reads_larger_and_longer_videos():
    subset = scenes()[::5]  # 65 scenes: every colour, shape, motion and background
    frames = torch.stack([render(s, 2, num_frames=16, height=64, width=64) for s in subset])
    acc = accuracy(frames, [s.prompt for s in subset])
    print(f"clean 64x64x16, {len(subset)} scenes: {acc}")
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_judge_refuses_every_one_attribute_change():
    # Through `judge` itself, so a third of the scenes (seeded), against every other value of each
    # attribute: 108 scenes x 14 changed prompts.
    subset = random.Random(0).sample(scenes(), 108)
    for attribute in ATTRIBUTES:
        assert {s.get(attribute) for s in subset} == set(VALUES[attribute])
    cases = [(i, a, changed(s, a, v)) for i, s in enumerate(subset)
             for a in ATTRIBUTES for v in VALUES[a] if v != s.get(a)]
    videos = torch.stack([render(s, 3) for s in subset])
    verdicts = judge(videos[[i for i, _, _ in cases]], [p for _, _, p in cases])
    for attribute in ATTRIBUTES:
        rows = torch.tensor([a == attribute for _, a, _ in cases])
        others = [b for b in ATTRIBUTES if b != attribute]
        refused = float((~verdicts[attribute][rows]).float().mean())
        rest = float(torch.stack([verdicts[b][rows] for b in others]).all(dim=0).float().mean())
        print(f"{attribute} changed ({int(rows.sum())} prompts): refused {refused:.4f}, "
              f"other attributes still right {rest:.4f}")
        assert refused >= 0.99 and rest >= 0.99
        assert not verdicts["all"][rows].any()


@pytest.mark.parametrize("damage", ["noise", "blur", "noise+blur"])
def test_judge_tolerates_mild_noise_and_blur(clean, damage):
    frames, prompts = clean
    torch.manual_seed(0)
    if "noise" in damage:
        frames = (frames + 0.05 * torch.randn_like(frames)).clamp(0, 1)
    if "blur" in damage:
        frames = blur(frames)
    acc = accuracy(frames, prompts)
    print(f"{damage} (noise: std 0.05 per channel; blur: 3x3 binomial), 324 scenes: {acc}")
    # Measured 1.0 on every attribute; the brief asked for 0.95, 0.99 is what we can honestly keep.
    assert all(acc[a] >= 0.99 for a in ATTRIBUTES), acc


def test_judge_says_none_when_it_cannot_tell():
    scene = scenes()[0]
    video = render(scene, 0)
    empty = video[:, :, :1, :1].expand_as(video).clone()  # the background alone
    reading = read(empty)
    assert reading.background == scene.background
    assert (reading.colour, reading.shape, reading.motion) == (None, None, None)
    on_object = (video != video[:, :, :1, :1]).any(dim=1, keepdim=True)
    orange = torch.where(on_object, torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1), video)
    assert read(orange).colour is None  # 0.37 from red and from yellow: no palette colour
    verdict = judge(empty[None], [scene.prompt])
    assert not verdict["colour"] and not verdict["all"] and verdict["background"]


def test_judge_names_the_motion_it_sees():
    up = [s for s in scenes() if s.motion == "up"][0]
    video = render(up, 0)
    assert read(video).motion == "up"  # y grows downwards: up is a falling centroid y
    assert read(video.flip(0)).motion == "down"  # played backwards
    assert read(video.flip(-1)).motion == "up"  # mirrored left-right
    grows = render([s for s in scenes() if s.motion == "grows"][0], 0)
    assert read(grows.flip(0)).motion is None  # shrinking is no motion of the world


# --- the rewards -------------------------------------------------------------------------------

def test_world_judge_reward(clean):
    frames, prompts = clean[0][:12], clean[1][:12]
    wrong = [changed(s, "colour", "cyan" if s.colour != "cyan" else "red") for s in scenes()[:12]]
    rewards, info = WorldJudge()(frames, prompts[:6] + wrong[6:])
    assert rewards.shape == (12,) and rewards.dtype == frames.dtype
    assert rewards.tolist() == [1.0] * 6 + [0.0] * 6
    assert float(info["accuracy_colour"]) == 0.5 and float(info["accuracy_shape"]) == 1.0
    assert all(isinstance(info[f"accuracy_{a}"], torch.Tensor) and info[f"accuracy_{a}"].numel() == 1
               for a in ATTRIBUTES)
    assert set(info["per_video"]) == set(ATTRIBUTES)
    assert info["per_video"]["colour"].tolist() == [1.0] * 6 + [0.0] * 6


def test_soft_reward_ranks_the_true_prompt_first(clean):
    frames, prompts = clean
    reward = WorldAlignment()
    true, info = reward(frames, prompts)
    assert ((true >= 0) & (true <= 1)).all()
    print(f"true prompts: reward mean {float(true.mean()):.3f}, min {float(true.min()):.3f}; "
          f"parts {({a: round(float(v.mean()), 3) for a, v in info['per_video'].items()})}")
    for attribute in ATTRIBUTES:
        wins, total = 0, 0
        for value in VALUES[attribute]:
            idx = [i for i, s in enumerate(scenes()) if s.get(attribute) != value]
            alt, _ = reward(frames[idx], [changed(scenes()[i], attribute, value) for i in idx])
            assert ((alt >= 0) & (alt <= 1)).all()
            wins, total = wins + int((alt < true[idx]).sum()), total + len(idx)
        print(f"{attribute}: true prompt scores higher than a changed one in {wins}/{total}")
        assert wins / total >= 0.95


def test_soft_reward_needs_an_object(clean):
    frames, prompts = clean
    empty = frames[..., :1, :1].expand_as(frames).clone()
    true, _ = WorldAlignment()(frames, prompts)
    none, info = WorldAlignment()(empty, prompts)
    assert (none < true).all()
    for part in ("colour", "shape", "motion"):  # an empty frame is no still object of any colour
        assert float(info["per_video"][part].max()) < 0.05, part


@pytest.mark.parametrize("start", ["render", "random", "flat", "odd size"])
def test_soft_reward_gradient_reaches_frames(start):
    scene = scenes()[7]
    if start == "render":
        frames = render(scene, 0)[None]
    elif start == "random":
        frames = torch.rand(1, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    else:  # a flat background: zero distance everywhere, the centroid at the frame's centre
        size = 33 if start == "odd size" else 32  # there a pixel centre
        frames = torch.full((1, 8, 3, size, size), 0.5)
    frames = (frames.repeat(2, 1, 1, 1, 1) + 0.01 * torch.randn(2, *frames.shape[1:])).clamp(0, 1)
    frames.requires_grad_(True)
    rewards, info = WorldAlignment()(frames, [scene.prompt] * 2)
    rewards.sum().backward()
    assert rewards.shape == (2,) and torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    assert all(not v.requires_grad for k, v in info.items() if k != "per_video")


def test_soft_reward_weights():
    frames = render(scenes()[0], 0)[None]
    parts = WorldAlignment()(frames, [scenes()[0].prompt])[1]["per_video"]
    only_shape, _ = WorldAlignment(background_weight=0, colour_weight=0, motion_weight=0)(
        frames, [scenes()[0].prompt])
    assert torch.allclose(only_shape, parts["shape"])
    with pytest.raises(ValueError, match="weight"):
        WorldAlignment(background_weight=-1)


@pytest.mark.parametrize("cls", [WorldJudge, WorldAlignment])
def test_check_prompts_lists_every_bad_prompt(cls):
    good = scenes()[0].prompt
    bad = ["a dog running on the beach", "a red hexagon moves left on a black background"]
    cls().check_prompts([good, good])
    with pytest.raises(ValueError) as err:
        cls().check_prompts([good, *bad, bad[0]])
    message = str(err.value)
    assert "2 of 3 prompts" in message and all(repr(p) in message for p in bad)
    assert repr(good) not in message and "<colour> <shape> <motion>" in message
    with pytest.raises(ValueError, match="shapes world"):  # and when called unchecked
        cls()(render(scenes()[0], 0)[None], bad[:1])


@pytest.mark.parametrize("cls", [WorldJudge, WorldAlignment])
def test_motion_needs_two_frames(cls):
    with pytest.raises(ValueError, match="random"):
        cls(frames="random")
    with pytest.raises(ValueError, match="two frames"):
        cls()(render(scenes()[0], 0)[None, :1], [scenes()[0].prompt])


@pytest.mark.parametrize("name", ["world_judge", "world_alignment"])
def test_yaml_instantiates_to_a_reward(name):
    reward = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(reward, Reward) and reward.frames == "all"
    assert reward.differentiable == (name == "world_alignment")
