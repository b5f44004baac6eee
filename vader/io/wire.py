"""Videos as text for a reward server (rewards/remote.py sends them, vader/serve_reward.py reads
them): each video `(T, C, H, W)` in [0, 1] becomes one base64 string.

    float32  the frames exactly (a .npy of float32): a served reward scores what an in-process one would
    uint8    frames rounded to 0..255 (a .npy of uint8): 4x smaller, what a saved video holds
    mp4      H.264 (vader.io.video.save_video; sides padded to a multiple of 16, cut off again when
             read): what a server written for video files expects; lossy
    png      each frame a PNG (a list per video): for chat endpoints that take images
"""
from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

ENCODINGS = ("float32", "uint8", "mp4", "png")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _b64(buffer.getvalue())


def encode_video(video: torch.Tensor, encoding: str, fps: int = 8) -> str | list[str]:
    """One video `(T, C, H, W)` in [0, 1] as base64 text (a list of PNGs for 'png')."""
    if encoding not in ENCODINGS:
        raise ValueError(f"video encoding {encoding!r}: choose one of {ENCODINGS}")
    video = video.detach().float().clamp(0, 1).cpu()
    if encoding == "float32":
        return _npy(video.numpy())
    as_uint8 = video.mul(255).round().to(torch.uint8)
    if encoding == "uint8":
        return _npy(as_uint8.numpy())
    if encoding == "png":
        from PIL import Image

        out = []
        for frame in as_uint8.permute(0, 2, 3, 1).numpy():
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG")
            out.append(_b64(buffer.getvalue()))
        return out
    from vader.io.video import save_video

    with tempfile.TemporaryDirectory() as folder:
        path = save_video(video, Path(folder) / "video.mp4", fps=fps)
        return _b64(path.read_bytes())


def decode_video(text: str | list[str], encoding: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The inverse of `encode_video`: `(T, C, H, W)` float32 in [0, 1]. `size` (H, W) cuts an mp4's
    padding off. Raises ValueError for text that is not a video in that encoding."""
    try:
        if encoding in ("float32", "uint8"):
            array = np.load(io.BytesIO(base64.b64decode(text, validate=True)), allow_pickle=False)
            if array.ndim != 4 or array.shape[1] != 3:
                raise ValueError(f"expected (T, 3, H, W) frames, got shape {array.shape}")
            video = torch.from_numpy(array.copy()).float()
            return video / 255 if encoding == "uint8" else video
        if encoding == "png":
            from PIL import Image

            frames = [np.asarray(Image.open(io.BytesIO(base64.b64decode(t, validate=True))).convert("RGB"))
                      for t in text]
            return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
        if encoding == "mp4":
            import imageio.v3 as iio

            array = iio.imread(base64.b64decode(text, validate=True), extension=".mp4", plugin="pyav")
            video = torch.from_numpy(np.asarray(array)).permute(0, 3, 1, 2).float() / 255
            return video if size is None else video[..., :size[0], :size[1]]
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001  a codec's or numpy's own error type
        raise ValueError(f"not a video in encoding {encoding!r}: {type(err).__name__}: {err}") from None
    raise ValueError(f"video encoding {encoding!r}: choose one of {ENCODINGS}")
