"""Read one training clip from a video file: which frames, at what size, and why a file is refused.

    rule = FrameRule(num_frames=16, height=256, width=256, fps=8)      # or stride=2
    frames = read_clip(path, rule, rng=random.Random(seed))            # (16, 3, 256, 256) in [-1, 1]

Which frames (`frame_indices`, a pure function of the video's length and frame rate):
- spacing: every `stride`-th native frame, or, when `fps` is set, frames spaced to that rate from
  the video's own average frame rate (24 fps sampled at 8 fps takes every 3rd frame; 30 fps at
  8 fps steps by 3.75, rounded per frame: 0, 4, 8, 11, 15). `stride` is ignored when `fps` is set.
  An `fps` above the video's own repeats frames rather than inventing new ones.
- span: `start`/`end` (seconds, as ActivityNet Captions give them) keep the frames shown in
  [start, end); a span reaching past the video is cut to the video.
- window: "random" draws the first frame uniformly over every start that fits (training; the
  caller's `rng`, so a seeded run is reproducible), "central" takes the middle (evaluation).
- short videos, where the spaced frames do not fit: "skip" refuses the file (`too_short`),
  "loop" wraps the indices around the span, "pad" repeats its last frame.

The frames are resized so they cover (height, width) with the aspect ratio kept (antialiased, so
a downscale does not alias), then centre-cropped to exactly that size, and scaled to [-1, 1]:
the range the VAEs of our backbones encode.

Why decord: it is already a dependency (requirements.txt, for `vader.score`), it seeks, and it
decodes only the frames asked for (`get_batch`), so a 16-frame clip from a long video costs 16
frames plus the seeks, not the whole file.

`read_image` reads an image-to-video sample's conditioning image by the same size rule.

A file that cannot be used raises `Unreadable` with one of `REASONS`, so the loader can count
and skip it rather than crash mid-epoch. What decord 0.6 does with damaged files (tested in
tests/test_clips.py):
- a truncated mp4 fails when opened, whichever layout: without its index (the `moov` atom at the
  end, ffmpeg's default) decord cannot open it; with the index at the front ("faststart") decord
  reads every packet while opening and fails on the missing ones. Both are `undecodable`.
- a file damaged in the middle opens, and reports its full length; decoding fails only for clips
  with a frame in a damaged group of pictures (keyframe to keyframe; decord decodes from the
  keyframe before each frame asked for). Such a file is `undecodable` for some windows and
  readable for others, so with a random window it may fail in one epoch and not the next.
- decord cannot read some narrow videos: at widths of 8, 16, 24, 48 and 72 pixels (on the
  machine this was written on; ffmpeg aligns rows per CPU) `get_batch` fails with "The size must
  exactly match", so such a video is `undecodable`. Training videos are far wider; tests use
  widths that are multiples of 64.
- decord's ffmpeg prints its complaints to stderr; we leave ffmpeg's log level alone, since it is
  global to the process.

Safe in DataLoader workers: no state is kept between calls; each call opens its own reader, with
one decoding thread (the workers are the parallelism), and no reader outlives the call, not even
through the traceback of an `Unreadable` a caller keeps. That matters: a decord reader alive when
a DataLoader forks (held by a kept exception, or garbage not yet collected) hangs the worker that
frees it, in decord's destructor waiting for a decoding thread the fork did not copy. Callers who
open decord readers of their own should drop them before the loader starts its workers. And catch
`Unreadable` inside the Dataset: raised out of a worker, torch re-raises it in the main process
as a RuntimeError carrying only the text (it cannot rebuild an exception with three arguments).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

REASONS = ("missing", "empty_file", "undecodable", "too_short", "empty_caption", "missing_image", "bad_image")
WINDOWS = ("random", "central")
SHORT_RULES = ("skip", "loop", "pad")
_EPS = 1e-6  # seconds * fps lands a hair above an integer (0.28 * 25 = 7.000000000000001)


class Unreadable(Exception):
    """A sample that cannot be used; `reason` is one of REASONS, `detail` says what was found."""

    def __init__(self, reason: str, path, detail: str):
        if reason not in REASONS:
            raise ValueError(f"Unreadable reason {reason!r} is not one of {REASONS}")
        # The arguments go to Exception too, so the exception pickles (DataLoader workers, pools).
        super().__init__(reason, path, detail)
        self.reason, self.path, self.detail = reason, path, detail

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.detail})"


@dataclass(frozen=True)
class FrameRule:
    """How to take a clip from a video; see the module docstring for the rules."""

    num_frames: int            # frames per clip
    height: int                # output size after resize and centre crop
    width: int
    stride: int = 1            # take every stride-th native frame (ignored when fps is set)
    fps: float | None = None   # or: sample at this frame rate, from the video's average fps
    window: str = "random"     # "random" (training: start drawn from rng) | "central"
    short: str = "skip"        # video too short: "skip" (too_short) | "loop" | "pad"

    def __post_init__(self):
        for name in ("num_frames", "height", "width", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FrameRule.{name} must be a positive integer, got {value!r}")
        fps = self.fps
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                                or not math.isfinite(fps) or fps <= 0):
            raise ValueError(f"FrameRule.fps must be a positive number (frames per second) or None "
                             f"to sample by stride, got {self.fps!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"FrameRule.window must be one of {WINDOWS}, got {self.window!r}")
        if self.short not in SHORT_RULES:
            raise ValueError(f"FrameRule.short must be one of {SHORT_RULES}, got {self.short!r}")


def _offsets(rule: FrameRule, native_fps: float) -> list[int]:
    """Frame offsets from the window's first frame: the spacing of the rule."""
    if rule.fps is None:
        return [i * rule.stride for i in range(rule.num_frames)]
    step = native_fps / rule.fps
    # Round half up per frame (not Python's round-half-even) so the spacing is the same at any
    # position; the offsets never decrease, and repeat when the target rate is above the native.
    return [math.floor(i * step + 0.5) for i in range(rule.num_frames)]


def _span(total: int, native_fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """Native frames [first, stop) shown within [start, end) seconds, cut to the video."""
    first = 0 if start is None else max(0, math.ceil(start * native_fps - _EPS))
    stop = total if end is None else min(total, math.ceil(end * native_fps - _EPS))
    return first, stop


def _check_rng(rule: FrameRule, rng: random.Random | None) -> None:
    if rule.window == "random" and rng is None:
        raise ValueError("FrameRule.window='random' needs an rng: pass rng=random.Random(seed), or "
                         "use window='central' for a deterministic clip")


def frame_indices(total: int, native_fps: float, rule: FrameRule, rng: random.Random | None,
                  start: float | None = None, end: float | None = None) -> list[int]:
    """The native frame indices to read, `rule.num_frames` of them, for a video of `total`
    frames at `native_fps`; `start`/`end` (seconds) restrict them to that span.

    Raises Unreadable('too_short', None, ...) for an empty video or span, and for a short one
    under `short="skip"` (read_clip re-raises it with the path); ValueError for a random window
    without an `rng`.
    """
    _check_rng(rule, rng)
    timed = rule.fps is not None or start is not None or end is not None
    if timed and not (math.isfinite(native_fps) and native_fps > 0):
        raise Unreadable("undecodable", None, f"the video reports a frame rate of {native_fps}, "
                         "so it cannot be sampled by time (fps, start, end)")
    if total <= 0:
        raise Unreadable("too_short", None, "the video has no frames")
    first, stop = _span(total, native_fps, start, end)
    available = stop - first
    if available <= 0:
        raise Unreadable("too_short", None, f"the span {start}-{end} s holds none of the video's "
                         f"{total} frames at {native_fps:g} fps")
    offsets = _offsets(rule, native_fps)
    needed = offsets[-1] + 1
    if needed <= available:
        room = available - needed
        begin = rng.randint(0, room) if rule.window == "random" else room // 2
        return [first + begin + o for o in offsets]
    if rule.short == "skip":
        where = "" if start is None and end is None else f" in the span {start}-{end} s"
        raise Unreadable("too_short", None, f"{rule.num_frames} frames spaced as asked need "
                         f"{needed} native frames; the video has {available}{where}")
    if rule.short == "loop":
        return [first + o % available for o in offsets]
    return [first + min(o, available - 1) for o in offsets]  # "pad"


def check_caption(caption: str, path) -> str:
    """The caption without surrounding whitespace; Unreadable('empty_caption') when nothing is left."""
    text = "" if caption is None else str(caption).strip()
    if not text:
        raise Unreadable("empty_caption", path, f"the caption is {caption!r}")
    return text


def _one_line(error: BaseException) -> str:
    """decord's message on one line, without its '[hh:mm:ss] /build/path/file.cc:NN: ' prefixes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)


def _resize_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, C, h, w) -> (T, C, height, width): scale to cover the target keeping the aspect ratio,
    then cut the centre. Works on uint8 so a long side of 1080 costs a quarter of float memory."""
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    # max(): rounding may land one pixel short of the side that decided the scale.
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    if size != [h, w]:
        frames = TF.resize(frames, size, antialias=True)
    return TF.center_crop(frames, [height, width])


def _decode(file: Path, rule: FrameRule, rng: random.Random | None, start: float | None,
            end: float | None) -> np.ndarray | tuple[str, str]:
    """The clip's frames, (T, H, W, 3) uint8, or (reason, detail) when the file cannot be used.

    Failures are returned, not raised: an exception's traceback holds the frames it passed
    through, and with them the decord reader (ours here, `self` in decord's own methods). Kept by
    a caller, or left in garbage when a DataLoader forks, that reader hangs the worker that frees
    it. Returning drops every reference when this function does.
    """
    try:
        reader = decord.VideoReader(str(file), ctx=decord.cpu(0), num_threads=1)
        total, native_fps = len(reader), reader.get_avg_fps()
    except Exception as error:  # DECORDError, RuntimeError and whatever else ffmpeg's wrapper throws
        return "undecodable", _one_line(error)
    try:
        indices = frame_indices(total, native_fps, rule, rng, start, end)
    except Unreadable as error:
        return error.reason, error.detail
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as error:  # damage in the middle of a file shows only here
        return "undecodable", f"frames {indices[0]}-{indices[-1]}: {_one_line(error)}"


def read_clip(path, rule: FrameRule, rng: random.Random | None = None,
              start: float | None = None, end: float | None = None) -> torch.Tensor:
    """`(T, C, H, W)` float32 in [-1, 1], T = rule.num_frames, (H, W) = (rule.height, rule.width),
    C = 3. Raises Unreadable: 'missing', 'empty_file', 'undecodable' (any decord error, its
    message as the detail) or 'too_short'."""
    _check_rng(rule, rng)  # before decord opens anything: a ValueError's traceback would hold it
    file = Path(path)
    if not file.exists():
        raise Unreadable("missing", path, "no such file")
    if file.stat().st_size == 0:
        raise Unreadable("empty_file", path, "the file has 0 bytes")
    array = _decode(file, rule, rng, start, end)
    if isinstance(array, tuple):
        raise Unreadable(array[0], path, array[1])
    frames = torch.from_numpy(array).permute(0, 3, 1, 2)
    frames = _resize_crop(frames, rule.height, rule.width)
    return frames.float().div_(127.5).sub_(1.0).contiguous()


def read_image(path, height: int, width: int) -> torch.Tensor:
    """A conditioning image (an image-to-video sample's first frame) as `(C, H, W)` float32 in
    [-1, 1], resized and cropped as `read_clip` does its frames. Raises Unreadable:
    'missing_image' (no such file) or 'bad_image' (empty, or not an image PIL can read)."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise Unreadable("missing_image", path, "no such file")
    try:
        with Image.open(file) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise Unreadable("bad_image", path, _one_line(error)) from None
    pixels = _resize_crop(torch.from_numpy(array.copy()).permute(2, 0, 1)[None], height, width)[0]
    return pixels.float().div_(127.5).sub_(1.0).contiguous()
