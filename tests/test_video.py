"""vader.io.video: files read back with the right frames and size, bad suffix, no temp files left."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vader.io.video import save_video, save_video_grid

T, H, W = 8, 32, 32


def read(path: Path) -> np.ndarray:
    return iio.imread(path, index=None)  # (T, H, W, 3) uint8


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_round_trip(tmp_path, suffix):
    frames = torch.rand(T, 3, H, W, requires_grad=True)  # grad: save_video must detach
    path = save_video(frames, tmp_path / f"clip{suffix}", fps=8)
    assert path == tmp_path / f"clip{suffix}"
    video = read(path)
    assert video.shape == (T, H, W, 3)
    assert list(tmp_path.iterdir()) == [path]  # temporary file renamed away, nothing else


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_content_survives(tmp_path, suffix):
    # Flat colours survive both codecs almost exactly; catches channel or axis mix-ups.
    frames = torch.zeros(T, 3, H, W)
    frames[:, 0] = 1.0  # red
    frames[T // 2:, :, : H // 2] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)  # blue top half
    video = read(save_video(frames, tmp_path / f"clip{suffix}")).astype(float)
    assert np.abs(video[0, H // 2, W // 2] - [255, 0, 0]).max() < 20
    assert np.abs(video[-1, 2, W // 2] - [0, 0, 255]).max() < 20
    assert np.abs(video[-1, -2, W // 2] - [255, 0, 0]).max() < 20


def test_gif_loops_forever(tmp_path):
    path = save_video(torch.rand(T, 3, H, W), tmp_path / "clip.gif", fps=10)
    meta = iio.immeta(path)
    assert meta["loop"] == 0
    assert meta["duration"] == 100


def test_mp4_pads_odd_sizes_with_edge_pixels(tmp_path):
    # Red with a blue right part from column 12. Edge padding keeps column 14 blue; rescaling
    # 20 -> 32 columns (what imageio does unasked) would move the boundary to column ~19.
    frames = torch.zeros(T, 3, 30, 20)
    frames[:, 0] = 1.0
    frames[..., 12:] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    video = read(save_video(frames, tmp_path / "clip.mp4")).astype(float)
    assert video.shape == (T, 32, 32, 3)
    assert np.abs(video[0, 8, 8] - [255, 0, 0]).max() < 20
    assert np.abs(video[0, 8, 14] - [0, 0, 255]).max() < 20
    assert np.abs(video[0, 31, 31] - [0, 0, 255]).max() < 20  # padding copies the edge


def test_creates_parent_and_accepts_str(tmp_path):
    path = save_video(torch.rand(T, 3, H, W), str(tmp_path / "a" / "b" / "clip.gif"))
    assert isinstance(path, Path) and path.is_file()


def test_bad_suffix_raises(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4.*\.gif"):
        save_video(torch.rand(T, 3, H, W), tmp_path / "clip.avi")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import vader.io.video

    def crash(array, path, fps):
        Path(path).write_bytes(b"half a video")
        raise RuntimeError("disk full")

    monkeypatch.setitem(vader.io.video._WRITERS, ".mp4", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_video(torch.rand(T, 3, H, W), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    import vader.io.video

    path = save_video(torch.rand(T, 3, H, W), tmp_path / "clip.gif")
    before = path.read_bytes()

    def crash(array, path, fps):
        raise RuntimeError("killed")

    monkeypatch.setitem(vader.io.video._WRITERS, ".gif", crash)
    with pytest.raises(RuntimeError):
        save_video(torch.rand(T, 3, H, W), path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_bad_frame_shape_raises(tmp_path):
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        save_video(torch.rand(2, T, 3, H, W), tmp_path / "clip.gif")


def test_grid(tmp_path):
    n, pad = 5, 2
    path = save_video_grid(torch.rand(n, T, 3, H, W), tmp_path / "grid.gif", fps=8, nrow=3)
    video = read(path)
    # 3 columns, 2 rows, make_grid's 2-pixel padding around every tile.
    assert video.shape == (T, 2 * (H + pad) + pad, 3 * (W + pad) + pad, 3)
    assert list(tmp_path.iterdir()) == [path]
