"""Fréchet Video Distance (FVD): how far generated videos lie from real ones, as the Fréchet
distance between Gaussians fitted to video features (Unterthiner et al. 2018, "Towards Accurate
Generative Models of Video", arXiv:1812.01717).

    extractor = video_features("i3d")           # or "tiny" (tests)
    reference = reference_stats(clips, extractor, 16, 256, 256, fps=8, cache="ref.pt")
    score = fvd(extractor(videos), reference)   # videos (N, T, 3, H, W) in [0, 1]

Features: the Kinetics-400 I3D as TorchScript (`i3d_torchscript.pt`, StyleGAN-V's and DIGAN's
port of the tf.hub model the reference uses; 400 logits per video). Preprocessing follows
google-research/frechet_video_distance `preprocess`: every frame resized bilinearly to 224 x 224
(the whole frame, aspect ratio not kept, no antialiasing), scaled to [-1, 1]; the network gets
(N, 3, T, 224, 224) with `rescale=False, resize=False, return_features=True`. Torch's bilinear
uses half-pixel centres where TF1's `resize_bilinear` does not, so numbers match the reference
up to that resampling, as StyleGAN-V's do.

Sample size: FVD is biased upward at small sample sizes (the covariance of a few videos is a poor
estimate), so numbers are only comparable at equal counts; the literature reports 2048 videos
(StyleGAN-V's fvd2048_16f). Below FEW_VIDEOS a warning says so; below 2 there is no covariance.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from vader.data.clips import FrameRule, Unreadable, read_clip
from vader.data.manifests import Clip
from vader.io.files import atomic_write

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_FILE = Path(urlparse(I3D_URL).path).name  # i3d_torchscript.pt
I3D_SIZE = 224
I3D_MIN_FRAMES = 9  # I3D halves time 3 times, then pools 2 steps: ceil(T / 8) >= 2
FEW_VIDEOS = 256    # below this, warn: the estimate is biased (the literature uses 2048)
EXTRACTORS = ("i3d", "tiny")


class VideoFeatures(Protocol):
    """Videos `(N, T, 3, H, W)` in [0, 1] -> features `(N, D)`; `name` identifies the features
    in a reference-statistics cache."""

    name: str

    def __call__(self, videos: torch.Tensor) -> torch.Tensor: ...


def network_input(videos: torch.Tensor, size: int, antialias: bool,
                  device: torch.device) -> torch.Tensor:
    """(N, T, 3, H, W) in [0, 1] -> (N, 3, T, size, size) in [-1, 1], on `device`: every frame
    resized bilinearly to the square, the whole frame (aspect ratio not kept)."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected videos (N, T, 3, H, W) in [0, 1], got {tuple(videos.shape)}")
    n, t = videos.shape[:2]
    frames = F.interpolate(videos.flatten(0, 1).to(device, torch.float32), size=(size, size),
                           mode="bilinear", align_corners=False, antialias=antialias)
    return (frames * 2 - 1).reshape(n, t, 3, size, size).transpose(1, 2).contiguous()


def i3d_path(weights: str = "default") -> Path:
    """The I3D TorchScript file: "default" reads torch hub's cache (`<hub dir>/checkpoints/
    i3d_torchscript.pt`), downloading it from I3D_URL when absent; anything else is a local file."""
    if weights != "default":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights {str(path)!r} not found: give the path of "
                                    f"{I3D_FILE} (from {I3D_URL}), or 'default' for torch "
                                    "hub's cache")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / I3D_FILE
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(I3D_URL, str(cached), progress=False)
        except Exception as error:  # offline: URLError, or a proxy's HTTP error
            raise RuntimeError(f"could not download the FVD I3D network {I3D_FILE} from {I3D_URL} "
                               f"({error}). Offline, download that file elsewhere and put it at "
                               f"{cached}, or give its path as the I3D weights") from error
    return cached


class I3DFeatures:
    """Kinetics-400 I3D logits (400-d), as FVD uses them; see the module docstring."""

    name = "i3d"

    def __init__(self, weights: str = "default", device: str | torch.device = "cpu",
                 batch_size: int = 8):
        self.device, self.batch_size = torch.device(device), batch_size
        self.model = torch.jit.load(str(i3d_path(weights)), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in videos.split(self.batch_size):
            x = network_input(chunk, I3D_SIZE, antialias=False, device=self.device)
            try:
                out.append(self.model(x, rescale=False, resize=False, return_features=True).float())
            except (RuntimeError, torch.jit.Error) as error:  # the interpreter's own class
                if (t := x.shape[2]) >= I3D_MIN_FRAMES:
                    raise
                raise ValueError(f"I3D needs at least {I3D_MIN_FRAMES} frames per video, got {t} "
                                 "(published FVD uses 16)") from error
        return torch.cat(out)


class TinyVideoFeatures(nn.Module):
    """A small random Conv3d network (seeded, so every build is the same): weight-free FVD for
    tests. Its numbers mean nothing outside the run that made them; never report them as FVD."""

    name = "tiny"

    def __init__(self, dim: int = 16, size: int = 64, seed: int = 0):
        super().__init__()
        self.size = size
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv3d(8, dim, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.net(network_input(videos, self.size, antialias=True, device=device))


def video_features(name: str, weights: str = "default",
                   device: str | torch.device = "cpu") -> VideoFeatures:
    """An extractor by name: "i3d" (FVD as published; `weights` as `i3d_path` takes them) or
    "tiny" (TinyVideoFeatures, for tests)."""
    if name == "i3d":
        return I3DFeatures(weights, device)
    if name == "tiny":
        return TinyVideoFeatures().to(device)
    raise ValueError(f"FVD extractor {name!r} is not one of {EXTRACTORS}")


def feature_stats(features: torch.Tensor,
                  what: str = "videos") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `(D,)` and unbiased covariance `(D, D)` of `(N, D)` features, in float64."""
    if features.ndim != 2:
        raise ValueError(f"expected features (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"FVD needs at least 2 {what} for a covariance; got {n}")
    if n < FEW_VIDEOS:
        warnings.warn(f"FVD from {n} {what} is biased upward (the literature uses 2048): compare "
                      "it only with FVDs from the same number of videos", stacklevel=2)
    x = features.detach().double().cpu()
    return x.mean(0), torch.cov(x.T, correction=1).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64, through
    torchmetrics' `_compute_fid` (private: the public FrechetInceptionDistance keeps raw sums and
    takes no precomputed statistics; tests/test_fvd.py checks it against scipy's sqrtm)."""
    from torchmetrics.image.fid import _compute_fid

    mu1, sigma1, mu2, sigma2 = (v.double().cpu() for v in (mu1, sigma1, mu2, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"covariances {tuple(sigma1.shape)}, {tuple(sigma2.shape)}")
    return float(_compute_fid(mu1, sigma1, mu2, sigma2))


@dataclass(frozen=True)
class ReferenceStats:
    """Feature statistics of real clips, and what they were computed with (`settings`:
    extractor, num_frames, height, width, fps, stride, clips given, fingerprint of the list)."""

    mean: torch.Tensor  # (D,) float64
    cov: torch.Tensor   # (D, D) float64
    settings: dict
    num_videos: int     # clips whose features went in (unreadable ones are left out)


def _fingerprint(clips: list[Clip]) -> str:
    """Of the clip list as given (paths and spans, not file contents)."""
    text = "\n".join(f"{c.video}|{c.start}|{c.end}" for c in clips)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def reference_stats(clips: Sequence[Clip | str | Path], extractor: VideoFeatures, num_frames: int,
                    height: int, width: int, fps: float | None = None, stride: int = 1,
                    cache: str | Path | None = None, batch_size: int = 8) -> ReferenceStats:
    """Mean and covariance of the features of real clips (Clips or video paths), each read with
    `read_clip` at the evaluation's frames and size, the central window, `fps` or `stride` as
    FrameRule takes them. Unreadable clips are left out with a warning. With `cache`, statistics
    saved there are reused if they were computed with the same settings and clip list (else a
    ValueError says what differs); otherwise they are computed and saved there."""
    items = [c if isinstance(c, Clip) else Clip(Path(c), "") for c in clips]
    rule = FrameRule(num_frames, height, width, stride=stride, fps=fps, window="central")
    settings = {"extractor": extractor.name, "num_frames": num_frames, "height": height,
                "width": width, "fps": fps, "stride": stride, "clips": len(items),
                "fingerprint": _fingerprint(items)}
    if cache is not None and Path(cache).is_file():
        return _load(Path(cache), settings)
    features, batch, skipped = [], [], []  # batch: frames waiting for the extractor
    for i, clip in enumerate(items):
        try:
            batch.append((read_clip(clip.video, rule, start=clip.start, end=clip.end) + 1) / 2)
        except Unreadable as error:
            skipped.append(str(error))
        if batch and (len(batch) == batch_size or i == len(items) - 1):
            features.append(extractor(torch.stack(batch)).detach().double().cpu())
            batch = []
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(items)} reference clips could not be read and are "
                      f"left out; first: {skipped[0]}", stacklevel=2)
    stacked = torch.cat(features) if features else torch.empty(0, 0, dtype=torch.float64)
    mean, cov = feature_stats(stacked, "reference clips")
    stats = ReferenceStats(mean, cov, settings, stacked.shape[0])
    if cache is not None:
        atomic_write(cache, lambda tmp: torch.save(asdict(stats), tmp))
    return stats


def _load(path: Path, settings: dict) -> ReferenceStats:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or set(state) != {f.name for f in fields(ReferenceStats)}:
        raise ValueError(f"{path} is not an FVD reference-statistics file: delete it or choose "
                         "another cache path")
    differ = {k: (state["settings"].get(k), v) for k, v in settings.items()
              if state["settings"].get(k) != v}
    if differ:
        what = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ValueError(f"FVD reference statistics {path} were computed with other settings "
                         f"({what}); delete the file to recompute them, or choose another "
                         "cache path")
    return ReferenceStats(**state)


def fvd(features: torch.Tensor, reference: ReferenceStats) -> float:
    """FVD of generated videos' features `(N, D)` (from the extractor that made `reference`)
    against the reference statistics. N >= 2; warns below FEW_VIDEOS."""
    mean, cov = feature_stats(features, "generated videos")
    if mean.shape != reference.mean.shape:
        raise ValueError(f"features have {mean.shape[0]} dimensions, the reference statistics "
                         f"({reference.settings['extractor']}) {reference.mean.shape[0]}")
    return frechet_distance(mean, cov, reference.mean, reference.cov)


class FVDMetric:
    """FVD as the evaluation reports it, one number per model's set of videos
    (vader.evaluation.evaluate's `set_metrics`)."""

    def __init__(self, extractor: VideoFeatures, reference: ReferenceStats):
        self.extractor, self.reference = extractor, reference

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        return self.extractor(videos)

    def score(self, features: torch.Tensor) -> float:
        return fvd(features, self.reference)
