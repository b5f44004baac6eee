"""Write videos `(T, C, H, W)` in [0, 1] to .mp4 or .gif, atomically.

The file appears complete or not at all: we write a hidden temporary file next to the target and
`os.replace` it into place, so a crash (or a preempted job) never leaves a half-written video that
a later run or a viewer would trip over.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torchvision.utils import make_grid

from vader.io.files import atomic_write

SUPPORTED_SUFFIXES = (".mp4", ".gif")
MACRO_BLOCK = 16  # H.264 codes 16x16 blocks; some players reject other sizes


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """`(T, C, H, W)` float in [0, 1] -> `(T, H, W, C)` uint8 on the CPU."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"expected frames of shape (T, C, H, W) with C in (1, 3), got {tuple(frames.shape)}")
    frames = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)  # both writers below want RGB
    return frames.permute(0, 2, 3, 1).cpu().numpy()


def _write_mp4(array: np.ndarray, path: Path, fps: int) -> None:
    # Pad with edge pixels rather than letting imageio rescale: rescaling blurs the frames we
    # want to inspect and warns on every call.
    h, w = array.shape[1:3]
    pad_h, pad_w = -h % MACRO_BLOCK, -w % MACRO_BLOCK
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    # yuv420p: the pixel format every browser and player can show.
    iio.imwrite(path, array, plugin="FFMPEG", extension=".mp4", fps=fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=MACRO_BLOCK)


def _write_gif(array: np.ndarray, path: Path, fps: int) -> None:
    # Pillow takes the frame duration in milliseconds; loop=0 means loop forever.
    iio.imwrite(path, array, plugin="pillow", extension=".gif", duration=1000 / fps, loop=0)


_WRITERS = {".mp4": _write_mp4, ".gif": _write_gif}


def save_video(frames: torch.Tensor, path: str | Path, fps: int = 8) -> Path:
    """Save `(T, C, H, W)` frames in [0, 1] (any device, may require grad); format from the suffix.

    MP4 frames are padded up to a multiple of 16 pixels with edge pixels. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(f"unsupported video suffix {path.suffix!r} in {path}; "
                         f"supported: {', '.join(SUPPORTED_SUFFIXES)}")
    array = _to_uint8(frames)
    return atomic_write(path, lambda tmp: _WRITERS[suffix](array, tmp, fps))


def save_video_grid(videos: torch.Tensor, path: str | Path, fps: int = 8,
                    nrow: int | None = None) -> Path:
    """Tile `(N, T, C, H, W)` videos into one clip, `nrow` videos per row (default about
    sqrt(N), so the grid is roughly square), and save it like `save_video`."""
    if videos.ndim != 5:
        raise ValueError(f"expected videos of shape (N, T, C, H, W), got {tuple(videos.shape)}")
    videos = videos.detach()
    if nrow is None:
        nrow = int(np.ceil(np.sqrt(videos.shape[0])))
    grid = torch.stack([make_grid(videos[:, t], nrow=nrow, padding=2) for t in range(videos.shape[1])])
    return save_video(grid, path, fps=fps)
