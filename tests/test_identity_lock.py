"""identity_lock on a tiny random-weight DINOv2 saved in the hub layout (config, weights,
preprocessor_config.json with DINOv2's processor settings scaled down), on real footage."""
from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.identity_lock import IdentityLock
from tests.conftest import ROOT
from tests.test_flow_rewards import carphone, clip_of, panned
from vader.protocols import Reward

# DINOv2's BitImageProcessor (shorter side 256 bicubic, centre crop 224, ImageNet mean and std),
# scaled down for a tiny model.
PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
             "resample": 3, "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
             "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return str(folder)


def test_identity_lock_is_one_for_a_still_video_and_less_when_frames_change(dinov2):
    """Only what holds for any weights: with random ones a cut to another subject is not told
    apart from a moving camera (measured: continuous bikes 0.977, cut to carphone 0.994;
    docs/rewards.md), so the ordering at a cut waits for the real DINOv2."""
    reward = IdentityLock(pretrained=dinov2)
    same, cut = clip_of(16), torch.cat([clip_of(8), carphone()], 1)
    scores, info = reward(torch.cat([same, cut]), ["bikes", "bikes, then a car"])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and (scores < 1).all()
    assert info["identity_drift"].item() == pytest.approx(1 - scores.mean().item(), abs=1e-6)
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == pytest.approx(1.0, abs=1e-5)


def test_identity_lock_scores_only_its_keyframes_and_passes_gradients(dinov2):
    reward = IdentityLock(pretrained=dinov2, keyframes=4)
    video = clip_of(16)
    keys = reward.scored_frames(16)
    assert keys.tolist() == [0, 5, 10, 15]
    whole, _ = reward(video, ["bikes"])
    assert reward(video[:, keys], ["bikes"])[0].item() == pytest.approx(whole.item(), abs=1e-6)
    frames = video.clone().requires_grad_(True)
    reward(frames, ["bikes"])[0].sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad[:, keys].abs().sum() > 0
    assert frames.grad[:, 1].abs().sum() == 0  # not a keyframe


def test_identity_lock_loads_through_its_yaml_and_says_what_is_missing(dinov2, tmp_path):
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "identity_lock.yaml")
    assert node.pretrained == "facebook/dinov2-small"
    built = instantiate(node, pretrained=dinov2)
    assert isinstance(built, Reward) and built.differentiable and built.maximised_by_still_video
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained"):
        IdentityLock(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="at least 2"):
        IdentityLock(pretrained=dinov2, keyframes=1)
