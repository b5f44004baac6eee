"""Clip-level and detection rewards (xclip, actpred, object) on tiny random models written in the
real hub folder layouts (tests/tiny_video_models.py): shapes and gradients, preprocessing parity
with the transformers processors, target selection, errors, and a few training steps each."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.actpred import ActionPrediction
from rewards.object import ObjectDetection, yolos_preprocess, yolos_settings, yolos_size
from rewards.video_models import sample_clip, videomae_preprocess, videomae_settings
from rewards.xclip import XCLIPScore
from tests import learning, tiny_video_models as tvm
from tests.conftest import CONF
from vader.protocols import Reward

B, T = 2, 5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return learning.reward_folders(tmp_path_factory.mktemp("tiny_video_rewards"),
                                   ("xclip", "actpred", "object"))


def build(name: str, folders, **kwargs):
    cls = {"xclip": XCLIPScore, "actpred": ActionPrediction, "object": ObjectDetection}[name]
    defaults = {"actpred": {"action": "playing guitar"}, "object": {"object": "dog"}}
    return cls(pretrained=str(folders[name]), **{**defaults.get(name, {}), **kwargs})


def natural_image(height: int = 180, width: int = 240, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): smooth colour gradients, a disc, a bar and mild texture; not noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    img = torch.stack([0.2 + 0.6 * x, 0.3 + 0.5 * y * (1 - x), 0.5 + 0.3 * torch.sin(6 * x + 3 * y)])
    disc = ((x - 0.35) ** 2 + (y - 0.5) ** 2) < 0.04
    img[:, disc] = torch.tensor([0.9, 0.2, 0.15]).view(3, 1)
    bar = (x > 0.6) & (x < 0.8) & (y > 0.2) & (y < 0.85)
    img[:, bar] = torch.tensor([0.1, 0.25, 0.7]).view(3, 1)
    texture = F.avg_pool2d(torch.rand(1, 3, height, width, generator=g), 5, 1, 2)[0]
    img = (img + 0.08 * (texture - 0.5)).clamp(0, 1)
    return (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def as_frames(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float (N, 3, H, W) in [0, 1]."""
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# 1. Shapes and gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["xclip", "actpred", "object"])
def test_shape_and_gradient(name, folders):
    reward = build(name, folders)
    assert isinstance(reward, Reward) and reward.differentiable
    frames = torch.rand(B, T, 3, 16, 16, requires_grad=True)
    values, info = reward(frames, ["a dog playing guitar", "a dog on a beach"])
    assert values.shape == (B,) and torch.isfinite(values).all()
    # numbers as detached one-element tensors: no wait for the device inside a training step
    assert info and all(isinstance(v, torch.Tensor) and v.numel() == 1 and not v.requires_grad
                        for v in info.values())
    values.sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


@pytest.mark.parametrize("t, n, expected", [(16, 4, [0, 5, 10, 15]), (2, 4, [0, 0, 1, 1]),
                                            (1, 3, [0, 0, 0]), (8, 8, list(range(8)))])
def test_sample_clip_spreads_and_repeats(t, n, expected):
    frames = torch.arange(t).float().view(1, t, 1, 1, 1).expand(1, t, 3, 2, 2)
    assert sample_clip(frames, n)[0, :, 0, 0, 0].long().tolist() == expected


def test_clip_rewards_use_the_models_frame_count(folders):
    # X-CLIP's position embeddings fix the frame count: a 2- or 9-frame clip must still score.
    reward = build("xclip", folders)
    for t in (1, 2, 9):
        assert reward(torch.rand(1, t, 3, 16, 16), ["a"])[0].shape == (1,)


# 2. Preprocessing parity ------------------------------------------------------------------------

def pixel_diff(ours: torch.Tensor, ref: torch.Tensor, std: list[float]) -> float:
    """Max abs difference of two normalised batches, back in [0, 1] pixel units."""
    return ((ours - ref).abs() * torch.tensor(std).view(3, 1, 1)).max().item()


# Both transformers backends resize on uint8 and round there, so they differ from our float
# resize by up to about one uint8 level (1/255 = 0.0039). Measured on natural_image: 0.0032
# (VideoMAE, X-CLIP; 180x240 -> 32) and 0.0029 (YOLOS) for both backends; PIL and torchvision
# agree with each other to 1e-6.
PIXEL_TOL = 0.005


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_videomae_parity(backend, folders):
    from transformers import VideoMAEImageProcessor, VideoMAEImageProcessorPil
    cls = VideoMAEImageProcessor if backend == "torchvision" else VideoMAEImageProcessorPil
    images = [natural_image(seed=s) for s in range(4)]  # 4 = the tiny model's num_frames
    reward = ActionPrediction(str(folders["actpred"]), action="drinking")
    ours = videomae_preprocess(as_frames(images), reward.settings)
    ref = cls.from_pretrained(folders["actpred"])(images, return_tensors="pt").pixel_values[0]
    assert ref.shape == ours.shape == (4, 3, 32, 32)
    assert pixel_diff(ours, ref, tvm.IMAGENET_STD) < PIXEL_TOL
    with torch.no_grad():
        a, b = (reward.model(pixel_values=p[None]).logits for p in (ours, ref))
    assert cosine(a, b) > 0.999  # measured 0.999995


@pytest.mark.parametrize("kind, shape", [("videomae", (224, 224)), ("yolos", (512, 672))])
def test_parity_at_real_sizes(kind, shape):
    # The hub files' own settings (microsoft/xclip-base-patch32 and the VideoMAE checkpoint ship
    # the same legacy file, no crop_size; hustvl/yolos-tiny: shortest edge 512), on 180x240
    # frames, which both models upsample.
    from transformers import VideoMAEImageProcessor, YolosImageProcessor
    images = [natural_image(seed=3)]
    if kind == "videomae":
        config = {k: v for k, v in tvm.VIDEOMAE_PREPROCESSOR.items() if k != "crop_size"}
        config["size"] = 224
        ours = videomae_preprocess(as_frames(images), videomae_settings(config))
        ref = VideoMAEImageProcessor(**config)([images], return_tensors="pt").pixel_values[0]
    else:
        config = {**tvm.YOLOS_PREPROCESSOR, "size": {"shortest_edge": 512, "longest_edge": 1333}}
        ours = yolos_preprocess(as_frames(images), yolos_settings(config, None))
        ref = YolosImageProcessor(**config)(images, return_tensors="pt").pixel_values
    assert ours.shape[-2:] == ref.shape[-2:] == shape
    assert pixel_diff(ours, ref, tvm.IMAGENET_STD) < PIXEL_TOL


def test_xclip_parity(folders):
    from transformers import XCLIPProcessor
    images = [natural_image(seed=s) for s in range(4)]
    reward = build("xclip", folders)
    processor = XCLIPProcessor.from_pretrained(folders["xclip"])
    ref = processor(videos=[images], text=["a red disc"], return_tensors="pt")
    ours = videomae_preprocess(as_frames(images), reward.settings)
    assert reward.settings["mean"] == tuple(tvm.IMAGENET_MEAN)  # from the folder, not CLIP's
    assert pixel_diff(ours, ref.pixel_values[0], tvm.IMAGENET_STD) < PIXEL_TOL
    with torch.no_grad():
        a, b = (reward.model(input_ids=ref.input_ids, attention_mask=ref.attention_mask,
                             pixel_values=p[None]).video_embeds for p in (ours, ref.pixel_values[0]))
        assert cosine(a, b) > 0.999
        # The reward itself gives the cosine of the processor's own video/text embeddings.
        out = reward.model(**ref)
        expected = out.logits_per_video[0, 0] / reward.model.logit_scale.exp()
        got = reward(as_frames(images)[None], ["a red disc"])[0]
    assert abs(got.item() - expected.item()) < 1e-3


@pytest.mark.parametrize("hw", [(180, 240), (240, 180), (64, 64), (100, 1000), (16, 16)])
@pytest.mark.parametrize("short", [32, 512, 800])
def test_yolos_size_matches_transformers(hw, short):
    from transformers.models.yolos.image_processing_pil_yolos import (
        get_size_with_aspect_ratio_yolos)
    assert yolos_size(*hw, short, 1333) == get_size_with_aspect_ratio_yolos(hw, short, 1333)


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_yolos_parity(backend, folders):
    from transformers import YolosImageProcessor, YolosImageProcessorPil
    cls = YolosImageProcessor if backend == "torchvision" else YolosImageProcessorPil
    images = [natural_image(seed=s) for s in range(2)]
    reward = build("object", folders)
    ours = yolos_preprocess(as_frames(images), reward.settings)
    ref = cls.from_pretrained(folders["object"])(images, return_tensors="pt").pixel_values
    assert ref.shape == ours.shape == (2, 3, 32, 32)  # 32 x 42 floored to multiples of 16
    assert pixel_diff(ours, ref, tvm.IMAGENET_STD) < PIXEL_TOL
    with torch.no_grad():
        a, b = (reward.model(pixel_values=p).logits for p in (ours, ref))
    assert cosine(a, b) > 0.999


def test_yolos_size_option_and_real_config():
    settings = yolos_settings({"size": {"shortest_edge": 512, "longest_edge": 1333}}, None)
    assert yolos_preprocess(torch.rand(1, 3, 256, 320), settings).shape[-2:] == (512, 640)
    small = yolos_settings({"size": {"shortest_edge": 512, "longest_edge": 1333}}, 128)
    assert yolos_preprocess(torch.rand(1, 3, 256, 320), small).shape[-2:] == (128, 160)


# 3. Targets, modes, errors ----------------------------------------------------------------------

def test_actpred_target_from_config_and_from_prompt(folders):
    frames = torch.rand(3, T, 3, 16, 16)
    logits_probs = {}
    for action in tvm.KINETICS_LABELS.values():
        logits_probs[action] = build("actpred", folders, action=action.upper())(
            frames, ["x"] * 3)[0]
    from_prompt = build("actpred", folders, action=None)
    prompts = ["A man Drinking Beer at a bar", "a woman drinking tea", "a dog playing guitar"]
    got = from_prompt(frames, prompts)[0]
    # Longest name wins: "drinking beer", not "drinking"; matching ignores case.
    expected = torch.stack([logits_probs["drinking beer"][0], logits_probs["drinking"][1],
                            logits_probs["playing guitar"][2]])
    assert torch.allclose(got, expected)
    total = sum(logits_probs.values())
    assert torch.allclose(total, torch.ones(3), atol=1e-5)  # softmax over all classes


def test_actpred_errors(folders):
    with pytest.raises(ValueError, match=r"playing guitar"):  # close match listed
        build("actpred", folders, action="playing guitars")
    reward = build("actpred", folders, action=None)
    with pytest.raises(ValueError, match=r"a cat sleeping"):  # the prompt is named
        reward(torch.rand(1, T, 3, 16, 16), ["a cat sleeping"])
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained"):
        ActionPrediction(pretrained=str(folders["actpred"]) + "_missing")


def test_object_maximize_vs_minimize(folders):
    frames = torch.rand(B, T, 3, 16, 16)
    up = build("object", folders, mode="maximize", aggregation="min")
    down = build("object", folders, mode="minimize", aggregation="min")
    p_up, p_down = up(frames, ["a", "b"])[0], down(frames, ["a", "b"])[0]
    # min over frames of p vs min over frames of 1 - p = 1 - max over frames of p.
    per_frame = build("object", folders, frames="all", aggregation="mean")
    assert torch.all((p_up >= 0) & (p_up <= 1) & (p_down >= 0) & (p_down <= 1))
    assert torch.allclose(up(frames[:, :1], ["a", "b"])[0] + down(frames[:, :1], ["a", "b"])[0],
                          torch.ones(B))
    assert per_frame(frames, ["a", "b"])[0].shape == (B,)


def test_object_target_from_prompt(folders):
    frames = torch.rand(3, 2, 3, 16, 16)
    by_name = {n: build("object", folders, object=n)(frames, ["x"] * 3)[0]
               for n in ("dog", "hot dog", "cat")}
    got = build("object", folders, object=None)(
        frames, ["Two DOGS in a park", "a hot dog on a plate", "a cat"])[0]
    assert torch.allclose(got, torch.stack([by_name["dog"][0], by_name["hot dog"][1],
                                            by_name["cat"][2]]))


def test_object_errors(folders):
    with pytest.raises(ValueError, match=r"'dog'"):
        build("object", folders, object="dgo")
    with pytest.raises(ValueError, match="maximize"):
        build("object", folders, mode="max")
    with pytest.raises(ValueError, match="aggregation"):
        build("object", folders, aggregation="median")
    with pytest.raises(ValueError, match="N/A|no object"):  # "N/A" is not a target
        build("object", folders, object=None)(torch.rand(1, 1, 3, 16, 16), ["n/a"])


@pytest.mark.parametrize("name, prompts, unmatched", [
    ("actpred", ["a dog playing guitar", "a cat playing the piano", "a dog drinking beer",
                 "a fox reading a book"], ["a cat playing the piano", "a fox reading a book"]),
    ("object", ["two dogs", "a lamp", "a cat", "a chair"], ["a lamp", "a chair"])])
def test_check_prompts_lists_every_unmatched_prompt(name, prompts, unmatched, folders):
    reward = build(name, folders, **{"action" if name == "actpred" else "object": None})
    with pytest.raises(ValueError, match=r"2 of 4 prompts") as err:
        reward.check_prompts(prompts)
    assert all(repr(p) in str(err.value) for p in unmatched)
    reward.check_prompts([p for p in prompts if p not in unmatched])  # the rest match
    build(name, folders).check_prompts(prompts)  # a fixed target needs nothing from prompts


def test_trainer_checks_every_prompt_when_built(folders, make_trainer):
    # 2 nouns x 3 activities; "playing the piano" is no (tiny) Kinetics class. Whichever split
    # its prompts land in, building the trainer names both, before any step runs.
    overrides = ["reward_fn=actpred", f"reward_fn.pretrained={folders['actpred']}",
                 "prompt_fn=nouns_activities", "prompt_fn.nouns=['a dog','a cat']",
                 "prompt_fn.activities=['playing guitar','playing the piano','drinking']"]
    with pytest.raises(ValueError, match="2 of 6 prompts") as err:
        make_trainer(*overrides)
    assert "'a dog playing the piano'" in str(err.value)
    assert "'a cat playing the piano'" in str(err.value)
    make_trainer(*overrides, "reward_fn.action=drinking")  # one class for every video: fine


def test_composite_checks_its_parts_prompts(folders):
    from rewards.composite import Composite
    composite = Composite({"act": {"reward": build("actpred", folders, action=None)}})
    with pytest.raises(ValueError, match="1 of 1 prompts"):
        composite.check_prompts(["a cat playing the piano"])


def test_bad_frames_option(folders):
    with pytest.raises(ValueError, match="frames"):
        build("xclip", folders, frames="every")


@pytest.mark.parametrize("name", ["xclip", "actpred", "object"])
def test_yaml_targets_and_defaults(name, folders):
    cfg = OmegaConf.load(CONF / "reward_fn" / f"{name}.yaml")
    hub = {"xclip": "microsoft/xclip-base-patch32",
           "actpred": "MCG-NJU/videomae-base-finetuned-kinetics", "object": "hustvl/yolos-tiny"}
    assert cfg.pretrained == hub[name]
    cfg.pretrained = str(folders[name])
    reward = instantiate(cfg)
    assert isinstance(reward, Reward)


# 4. Training on the tiny backbone ---------------------------------------------------------------
# Smallest mean gain over seeds 0-2 the test accepts, about half the smallest single-seed gain
# measured (python -m benchmarks.learning_margins; docs/environment.md has both version sets).
# Held-out gain per seed, locked versions (torch 2.14.1), seeds 0-5, 2026-11-30:
#   actpred +0.469  +0.420  +0.315  +0.297  +0.374  +0.302    (6/6, mean +0.363)
#   object  +0.0470 +0.0623 +0.0654 +0.0606 +0.0392 +0.0583   (6/6, mean +0.0555)
# X-CLIP is not here: on the random tiny X-CLIP its held-out gains are at the noise level and
# change sign with the thread count and the torch version (seeds 0-5: 1/6 to 6/6 improved by
# setting, and the 6/6 setting failed under two threads), so no held-out claim is made for it;
# test_xclip_gradient_points_uphill checks what holds on any numerics.
MARGINS = {"actpred": 0.15, "object": 0.02}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["actpred", "object"])
def test_reward_trains(name, folders, tmp_path):
    outcomes = [learning.train(name, folders, seed, tmp_path / str(seed)) for seed in learning.SEEDS]
    learning.assert_learns(outcomes, MARGINS[name])


def test_xclip_gradient_points_uphill(folders, make_trainer):
    """One micro-step's LoRA gradient raises X-CLIP on the same prompts and noise when the LoRA
    moves a small step along it: a first-order property, so it holds whatever the numerics,
    and fails for a reward left under no_grad (no gradient) or a sign error (the reward falls)."""
    import random

    trainer = make_trainer("reward_fn=xclip", f"reward_fn.pretrained={folders['xclip']}")
    trainer.setup()
    prompts, seeds = ["a dog running on a beach", "a red car driving"], [11, 12]
    loss, values, _ = trainer.algorithm.forward_loss(prompts, seeds, random.Random(0))
    loss.backward()
    grads = [p.grad for p in trainer.params]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 0
    with torch.no_grad():
        for p, g in zip(trainer.params, grads):
            p -= 1e-2 * g / norm  # a step of length 1e-2 down the loss
        _, after, _ = trainer.algorithm.forward_loss(prompts, seeds, random.Random(0))
    # Measured: +0.00488 with one thread and with two (+0.00047 for a 1e-3 step, linear), and
    # -0.00452 for the same step up the loss.
    assert after.mean() - values.detach().mean() > 1e-3, (values, after)
