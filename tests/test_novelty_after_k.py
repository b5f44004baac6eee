"""novelty_after_k on a tiny random-weight DINOv2 (tests/test_identity_lock.py) and real footage.

Random DINOv2 weights cannot be trusted to order real content (identity_lock measured a cut to
carphone as more similar than continuous bikes footage), so no ordering here rests on them:
- the formula is checked exactly against embeddings the test computes from the model itself;
- the orderings (a cut: high novelty, large tax; a continuous pan: smaller tax) are checked with
  the reward's embedding replaced by pixel thumbnails, a weight-free embedding whose similarities
  on real footage can be trusted. Whether the real DINOv2 orders them so is not tested here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.common import resize_crop_normalize
from rewards.novelty_after_k import NoveltyAfterK
from tests.conftest import ROOT
from tests.test_flow_rewards import carphone, clip_of, panned
from tests.test_identity_lock import dinov2  # noqa: F401  (the tiny DINOv2 folder fixture)
from vader.protocols import Reward


def still(num_frames: int = 8) -> torch.Tensor:
    return panned()[:, :1].expand(1, num_frames, -1, -1, -1).contiguous()


def test_formula_matches_embeddings_computed_from_the_model(dinov2):  # noqa: F811
    """The model's own embeddings, put through the docstring's formula written out in loops.
    Random features keep consecutive frames above 0.99, so tau is set between their consecutive
    similarities: some pairs are taxed and some are not, and both terms are checked."""
    video = torch.cat([clip_of(8), torch.cat([clip_of(4), carphone(4)], 1)])
    model = NoveltyAfterK(pretrained=dinov2).model
    pixels = resize_crop_normalize(video.flatten(0, 1), 40, 32, (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225), "bicubic")
    f = F.normalize(model(pixel_values=pixels).pooler_output, dim=-1).view(2, 8, -1)
    tau = (f[:, 1:] * f[:, :-1]).sum(-1).median().item()
    reward = NoveltyAfterK(pretrained=dinov2, k=3, tau=tau, tax_weight=1.5)
    scores, info = reward(video, ["bikes", "bikes, then a car"])
    taxes = []
    for b in range(2):
        cos = lambda s, t: float(f[b, s] @ f[b, t])  # noqa: E731
        novelty = sum(1 - max(cos(t, s) for s in range(3)) for t in range(3, 8)) / 5
        tax = sum(max(0.0, tau - cos(t, t + 1)) for t in range(7))
        assert scores[b].item() == pytest.approx(novelty - 1.5 * tax, abs=1e-6)
        taxes.append(tax)
    assert sum(taxes) > 0 and info["coherence_tax"].item() == pytest.approx(sum(taxes) / 2, abs=1e-6)
    assert reward.reference_frames(8) == 3 and NoveltyAfterK(pretrained=dinov2).reference_frames(9) == 4


def test_a_still_video_has_no_novelty_and_no_tax(dinov2):  # noqa: F811
    scores, info = NoveltyAfterK(pretrained=dinov2)(still(), ["still"])
    assert scores.item() == pytest.approx(0.0, abs=1e-5)
    assert info["novelty"].item() == pytest.approx(0.0, abs=1e-5) and info["coherence_tax"].item() == 0


def thumbnails(frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T, 288): 8 x 12 colour thumbnails less their mean, unit length."""
    x = F.adaptive_avg_pool2d(frames.flatten(0, 1), (8, 12)).flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=-1).view(*frames.shape[:2], -1)


def test_a_cut_is_novel_but_taxed_and_a_continuous_pan_is_not(dinov2, monkeypatch):  # noqa: F811
    """Thumbnails stand in for DINOv2 (see the module docstring). The pan moves 4 pixels a frame
    over bikes.mp4, showing new ground; the cut is 8 frames of bikes then 8 of carphone."""
    pan, cut = panned(4, 16), torch.cat([clip_of(8, stride=1), carphone()], 1)
    scored = {}
    for weight in (0.0, 2.0):
        reward = NoveltyAfterK(pretrained=dinov2, tax_weight=weight)
        monkeypatch.setattr(reward, "embed", thumbnails)
        scored[weight] = reward(torch.cat([pan, cut, still(16)]), ["pan", "cut", "still"])[0]
    (pan_n, cut_n, still_n) = scored[0.0].tolist()   # novelty alone
    assert cut_n > pan_n + 0.3 and pan_n > 0.2 and still_n == pytest.approx(0.0, abs=1e-5)
    pan_tax, cut_tax, _ = ((scored[0.0] - scored[2.0]) / 2).tolist()
    assert cut_tax > 0.5 and pan_tax < 0.05, (pan_tax, cut_tax)
    assert scored[2.0][0] > scored[2.0][1]  # with the default tax the pan beats the cut


def test_novelty_passes_gradients_to_every_frame(dinov2):  # noqa: F811
    reward = NoveltyAfterK(pretrained=dinov2, tau=1.0)  # every pair taxed: both terms backprop
    video = torch.cat([clip_of(6), carphone(6)]).requires_grad_(True)
    scores, info = reward(video, ["bikes", "car"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert all(v.numel() == 1 and not v.requires_grad for v in info.values())
    scores.sum().backward()
    assert torch.isfinite(video.grad).all() and (video.grad.abs().sum((0, 2, 3, 4)) > 0).all()


def test_novelty_loads_through_its_yaml_and_checks_its_options(dinov2, tmp_path):  # noqa: F811
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "novelty_after_k.yaml")
    assert node.pretrained == "facebook/dinov2-small" and node.k is None
    built = instantiate(node, pretrained=dinov2)
    assert isinstance(built, Reward) and built.differentiable and not built.maximised_by_still_video
    with pytest.raises(FileNotFoundError, match="reward_fn.pretrained"):
        NoveltyAfterK(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="frames='all'"):
        NoveltyAfterK(pretrained=dinov2, frames="random")
    with pytest.raises(ValueError, match="tau"):
        NoveltyAfterK(pretrained=dinov2, tau=2.0)
    with pytest.raises(ValueError, match="k=8"):
        NoveltyAfterK(pretrained=dinov2, k=8)(clip_of(8), ["bikes"])
    with pytest.raises(ValueError, match="at least 1"):
        NoveltyAfterK(pretrained=dinov2, k=0)
