"""Long videos as overlapping windows (issue 18, first part): a latent video longer than the
backbone's window is denoised window by window at every step, and where windows overlap their
predictions are averaged with weights, as the co-denoising literature does (MultiDiffusion, Bar-Tal
et al. 2023, fuses overlapping crops' predictions by a per-pixel weighted average; Gen-L-Video,
Wang et al. 2023, and FreeNoise, Qiu et al. 2024, do it along time). The scheduler then steps the
whole long latent at once: DDIM and the other schedulers here act frame by frame, so a step of the
long video is the steps of its frames.

Windows and overlaps count latent frames, the axis `Backbone.latent_shape` puts third
((B, C, T, h, w)). Window k starts at k × (window − overlap); the last one is moved back to end at
the last frame, so every frame is covered and no window is shorter than `window` (it may then
overlap its neighbour by more than `overlap`).

Fusion weights inside a window: `uniform` (every covering window counts the same), `triangular`
(a window's weight falls linearly towards its ends, so a frame near a seam listens most to the
window it sits in the middle of; FreeNoise's and Gen-L-Video's choice of soft blending), or `none`
(each frame takes the first window that covers it: plain concatenation of the windows' outputs,
the baseline the fused modes are measured against).

`long_noise` initialises the long latent's noise as FreeNoise does (noise rescheduling): the first
window's frames are drawn from the video's seed and each later block of `window − overlap` frames
reuses the block one window earlier, shuffled in time, so every window sees noise of the same
statistics and windows far apart stay related instead of being independent draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vader.sampling.seeds import generator_seed

FUSIONS = ("triangular", "uniform", "none")
TIME_AXIS = 2  # latents are (B, C, T, h, w): vader.protocols.Backbone
SHUFFLE = "shuffle"  # generator_seed purpose of FreeNoise's time shuffles


@dataclass(frozen=True)
class Windows:
    """`window` latent frames per window, `overlap` shared by neighbours, `fusion` of the shared
    frames' predictions."""

    window: int
    overlap: int = 0
    fusion: str = "triangular"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"long.window={self.window}: a window holds at least one latent frame")
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"long.overlap={self.overlap}: use 0 to window - 1 = {self.window - 1} "
                             "latent frames")
        if self.fusion not in FUSIONS:
            raise ValueError(f"long.fusion={self.fusion!r}: use one of {FUSIONS}")

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    def spans(self, length: int) -> list[tuple[int, int]]:
        """(start, end) of every window over `length` latent frames, in order."""
        if length < self.window:
            raise ValueError(f"a video of {length} latent frames is shorter than one window "
                             f"({self.window}); lower long.window or raise num_frames")
        starts = list(range(0, length - self.window + 1, self.stride))
        if starts[-1] + self.window < length:
            starts.append(length - self.window)
        return [(s, s + self.window) for s in starts]

    def weights(self, length: int) -> list[torch.Tensor]:
        """Per window, the weight `(window,)` of each of its frames, normalised so the weights
        covering a frame sum to 1."""
        spans = self.spans(length)
        if self.fusion == "uniform":
            raw = [torch.ones(self.window) for _ in spans]
        elif self.fusion == "triangular":
            # 1, 2, ..., peak, ..., 2, 1: never 0, so a frame only one window covers keeps it.
            i = torch.arange(self.window, dtype=torch.float32)
            raw = [torch.minimum(i + 1, self.window - i) for _ in spans]
        else:
            taken = torch.zeros(length, dtype=torch.bool)
            raw = []
            for s, e in spans:
                raw.append((~taken[s:e]).float())
                taken[s:e] = True
        total = torch.zeros(length)
        for (s, e), w in zip(spans, raw):
            total[s:e] += w
        return [w / total[s:e] for (s, e), w in zip(spans, raw)]


def windows_of(long: object) -> Windows | None:
    """The `long` settings (vader.config.LongConfig) as Windows; None when `long.window` is null."""
    window = getattr(long, "window", None)
    return None if window is None else Windows(window, long.overlap, long.fusion)


def video_noise(shape: tuple[int, ...], seeds: list[int], windows: Windows | None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The initial noise of a video: `long_noise` when it is generated in windows, else one
    draw per video (vader.sampling.differentiable.make_noise)."""
    from vader.sampling.differentiable import make_noise

    if windows is None:
        return make_noise(shape, seeds, device)
    return long_noise(shape, seeds, windows, device)


def fuse(predict, x: torch.Tensor, windows: Windows) -> torch.Tensor:
    """The prediction for the long latent `x` (B, C, T, h, w): `predict(x_window)` on every window,
    the overlaps averaged with `windows.weights`. Differentiable; builds the result out of place,
    so autograd keeps each window's part apart (and a checkpointed `predict` recomputes one window
    at a time)."""
    length = x.shape[TIME_AXIS]
    out = torch.zeros_like(x)
    for (s, e), w in zip(windows.spans(length), windows.weights(length)):
        if not w.any():  # fusion "none": a window whose frames all came before
            continue
        part = predict(x[:, :, s:e]) * w.to(x.device, x.dtype).view(1, 1, -1, 1, 1)
        out = out + torch.nn.functional.pad(part, (0, 0, 0, 0, s, length - e))
    return out


def in_windows(predict, x: torch.Tensor, windows: Windows | None, checkpointed: bool = False) -> torch.Tensor:
    """`predict(x)`, or, with windows, the fused prediction of every window (`fuse`), each window's
    call checkpointed on its own when `checkpointed` (backward then recomputes one window at a
    time, so the memory it keeps follows the window)."""
    if windows is None:
        return predict(x)
    if checkpointed:
        from torch.utils.checkpoint import checkpoint

        return fuse(lambda w: checkpoint(predict, w, use_reentrant=False), x, windows)
    return fuse(predict, x, windows)


def long_noise(shape: tuple[int, ...], seeds: list[int], windows: Windows,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise `shape` = (B, C, T, h, w) for a long video, FreeNoise's rescheduling: the first
    `window` frames from each video's seed, then every block of `stride` frames a time-shuffled
    copy of the block `window` frames earlier (the shuffle drawn from the video's seed too)."""
    from vader.sampling.differentiable import make_noise

    length = shape[TIME_AXIS]
    first = make_noise((*shape[:TIME_AXIS], min(windows.window, length), *shape[TIME_AXIS + 1:]),
                       seeds, device, dtype)
    frames = list(first.unbind(TIME_AXIS))
    for start in range(windows.window, length, windows.stride):
        block = range(start - windows.window, start - windows.window + min(windows.stride, length - start))
        perms = [torch.randperm(len(block), generator=torch.Generator().manual_seed(
            generator_seed(SHUFFLE, seed, start))) for seed in seeds]
        for j in range(len(block)):
            frames.append(torch.stack([frames[block[int(p[j])]][b] for b, p in enumerate(perms)]))
    return torch.stack(frames, TIME_AXIS)
