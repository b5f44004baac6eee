"""framing on constructed frames and real footage. The composition terms are checked with the
weight-free saliency localiser, whose subject map means something without trained weights: the
subject is a 20 x 20 crop of real footage (bikes.mp4; scikit-image's astronaut is not installed
here) pasted on a flat grey frame. The DINOv2 localiser runs on a tiny random-weight DINOv2
(tests/test_identity_lock.py), which tests its wiring (the map is the model's own CLS attention,
gradients reach the frames), not where it finds subjects: that needs the real weights."""
from __future__ import annotations

import math

import kornia
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.common import resize_crop_normalize
from rewards.framing import Framing, centroid, line_orientation
from rewards.identity_lock import IdentityLock
from tests.conftest import ROOT
from tests.test_flow_rewards import bikes, clip_of, panned
from tests.test_identity_lock import dinov2  # noqa: F401  (the tiny DINOv2 folder fixture)
from vader.data.clips import FrameRule, read_clip
from vader.protocols import Reward

H, W, SIDE = 64, 96, 20


def subject_at(x: float, y: float, num_frames: int = 2, side: int = SIDE) -> torch.Tensor:
    """(1, T, 3, H, W): a real side x side crop of bikes.mp4 centred at (x W, y H) on flat grey."""
    crop = panned()[0, 0, :, 20:20 + side, 40:40 + side]
    frame = torch.full((3, H, W), 0.45)
    top, left = round(y * H - side / 2), round(x * W - side / 2)
    frame[:, top:top + side, left:left + side] = crop
    return frame.expand(1, num_frames, 3, H, W).contiguous()


def terms(reward: Framing, video: torch.Tensor) -> dict[str, float]:
    return {k: v.item() for k, v in reward(video, ["a subject"])[1].items()}


def test_saliency_finds_the_subject_and_thirds_beats_a_corner():
    reward = Framing(localiser="saliency")
    for x, y in [(1 / 3, 1 / 3), (2 / 3, 2 / 3), (0.12, 0.17)]:
        found = centroid(reward.subject(subject_at(x, y)[0]))
        assert found[:, 0].sub(x).abs().max() < 0.03 and found[:, 1].sub(y).abs().max() < 0.03, found
    at_thirds, in_corner = terms(reward, subject_at(2 / 3, 1 / 3)), terms(reward, subject_at(0.12, 0.17))
    centred = terms(reward, subject_at(0.5, 0.5))
    assert at_thirds["framing_thirds"] > -0.02                       # on the intersection
    assert centred["framing_thirds"] == pytest.approx(-1 / 6, abs=0.02)  # (W/6, H/6) away
    # The corner crop's centre is (20, 11) pixels from the nearest intersection: 0.2 diagonals.
    assert in_corner["framing_thirds"] == pytest.approx(-0.2, abs=0.02)
    scores = reward(torch.cat([subject_at(2 / 3, 1 / 3), subject_at(0.12, 0.17)]), ["a", "b"])[0]
    assert scores[0] > scores[1] + 0.5, scores


def test_a_subject_outside_the_safe_box_loses_its_mass():
    reward = Framing(localiser="saliency", safe_margin=0.1)
    # The box spans columns 9.6 to 86.4; the edge subject covers columns 88 to 96.
    inside, edge = terms(reward, subject_at(1 / 3, 2 / 3)), terms(reward, subject_at(23 / 24, 0.5, side=8))
    assert inside["framing_safe_mass"] > 0.95 and edge["framing_safe_mass"] < 0.1, (inside, edge)
    # A wider margin pushes the box's edge past the subject at the thirds point too.
    wide = terms(Framing(localiser="saliency", safe_margin=0.4), subject_at(1 / 3, 2 / 3))
    assert wide["framing_safe_mass"] < 0.2


def stripes_at(degrees: float) -> torch.Tensor:
    """(1, 1, H, W): horizontal stripes turned counter-clockwise by `degrees` (cropped from a
    bigger rotated image, so no black corners add edges of their own)."""
    rows = torch.arange(160.0).view(160, 1).expand(160, 200)
    big = (0.5 + 0.5 * torch.sin(2 * math.pi * rows / 8))[None, None]
    return kornia.geometry.rotate(big, torch.tensor([float(degrees)]))[..., 48:48 + H, 52:52 + W]


@pytest.mark.parametrize("degrees", [0, 10, 30, -30, 60])
def test_line_orientation_reads_the_angle_of_straight_lines(degrees):
    u = line_orientation(stripes_at(degrees))[0]
    assert math.degrees(0.5 * math.atan2(u[1], u[0])) == pytest.approx(degrees, abs=1.5)
    assert u.norm() > 0.95  # one orientation only: coherence about 1


def rolled(degrees_per_frame: float) -> torch.Tensor:
    """(1, 8, 3, H, W): eight frames of bikes.mp4, frame t turned by t * degrees_per_frame
    (kornia.geometry.rotate on a twice-as-large clip, then the centre cropped: no black corners)."""
    clip = (read_clip(bikes(), FrameRule(8, 2 * H, 2 * W, stride=2, window="central")) + 1) / 2
    turned = kornia.geometry.rotate(clip, torch.arange(8.0) * degrees_per_frame)
    return turned[..., H // 2:H // 2 + H, W // 2:W // 2 + W][None]


def test_a_rolling_camera_loses_horizon_stability():
    reward = Framing(localiser="saliency")
    level, slow, fast = (terms(reward, rolled(d))["framing_horizon"] for d in (0, 1, 4))
    assert fast < slow < level <= 0, (level, slow, fast)
    assert level > -0.005 and fast < 5 * level - 0.01
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    assert terms(reward, still)["framing_horizon"] == pytest.approx(0.0, abs=1e-4)


def test_framing_is_a_differentiable_per_video_score():
    reward = Framing(localiser="saliency")
    video = torch.cat([clip_of(4), rolled(3)[:, :4]]).requires_grad_(True)
    scores, info = reward(video, ["bikes", "rolling bikes"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert all(v.numel() == 1 and not v.requires_grad for v in info.values())
    scores.sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    flat = torch.full((1, 3, 3, 32, 32), 0.5, requires_grad=True)  # no subject, no lines
    flat_score, flat_info = reward(flat, ["grey"])
    flat_score.sum().backward()
    assert torch.isfinite(flat.grad).all() and flat_info["framing_horizon"].item() == 0.0


def test_dino_localiser_is_the_models_cls_attention_and_passes_gradients(dinov2):  # noqa: F811
    shared = IdentityLock(pretrained=dinov2).model     # loaded first, with SDPA attention
    reward = Framing(pretrained=dinov2)
    assert reward.model is shared and shared.config._attn_implementation == "eager"
    images = clip_of(3)[0]                            # 64 x 96: shorter side to the crop (32)
    pixels = resize_crop_normalize(images, 32, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert pixels.shape[-2:] == (32, 48)              # 4 x 6 patches of 8
    attention = shared(pixel_values=pixels, output_attentions=True).attentions[-1]
    expected = attention[:, :, 0, 1:].mean(1).view(3, 4, 6)
    assert torch.allclose(reward.dino_attention(images), expected, atol=1e-5)
    p = reward.subject(images)
    assert torch.allclose(p.sum((-2, -1)), torch.ones(3))
    video = torch.cat([clip_of(4), rolled(3)[:, :4]]).requires_grad_(True)
    scores, _ = reward(video, ["bikes", "rolling bikes"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0


def test_framing_loads_through_its_yaml_and_checks_its_options(dinov2, tmp_path):  # noqa: F811
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "framing.yaml")
    assert (node.localiser, node.pretrained) == ("dino", "facebook/dinov2-small")
    built = instantiate(node, pretrained=dinov2)
    assert isinstance(built, Reward) and built.differentiable and built.maximised_by_still_video
    offline = instantiate(node, localiser="saliency", pretrained=str(tmp_path / "missing"))
    assert isinstance(offline, Reward) and not hasattr(offline, "model")  # no weights needed
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained"):
        Framing(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="localiser"):
        Framing(localiser="sobel")
    with pytest.raises(ValueError, match="safe_margin"):
        Framing(localiser="saliency", safe_margin=0.5)
    with pytest.raises(ValueError, match="frames='all'"):
        Framing(localiser="saliency", frames="random")
    assert Framing(localiser="saliency", frames="random", horizon_weight=0).frames == "random"
