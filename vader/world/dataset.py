"""`python -m vader.world render`: a captioned shapes-world dataset on disk, in the manifest
format `dataset=manifest` reads (`manifest.csv` with columns video, caption; docs/data.md).

Video i is scene i mod len(split) (shuffled once by the seed) rendered with seed
`seed * 1_000_003 + i`, so the folder is a function of the arguments. Videos are lossless H.264
in RGB (libx264rgb, crf 0): decoding gives back the rendered 8-bit pixels exactly, where the
usual yuv420p would halve the colour resolution and smear a 32-pixel frame's colours. PyAV
encodes in this process: spawning ffmpeg per video (imageio) costs ~0.4 s a video.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import av
import torch

from vader.io.files import atomic_write, atomic_write_text
from vader.world.grammar import scenes
from vader.world.render import render


def write_video(frames: torch.Tensor, path: Path, fps: int = 8) -> None:
    array = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264rgb", rate=fps)
            stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "rgb24"
            stream.options = {"crf": "0", "preset": "ultrafast"}
            for image in array:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
    atomic_write(path, encode)


def write_dataset(out: Path, num_videos: int, split: str = "train", seed: int = 0,
                  num_frames: int = 8, height: int = 32, width: int = 32) -> Path:
    if num_videos < 1:
        raise ValueError(f"--num-videos {num_videos}: give at least 1")
    pool = [s.prompt for s in scenes(split)]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    from tqdm.auto import tqdm
    for i in tqdm(range(num_videos), desc="rendering", unit="video", dynamic_ncols=True):
        prompt = pool[order[i % len(pool)]]
        name = f"videos/{i:05d}.mp4"
        write_video(render(prompt, seed * 1_000_003 + i, num_frames, height, width), out / name)
        rows.append({"video": name, "caption": prompt})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["video", "caption"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # Written last: a folder whose manifest exists is complete.
    atomic_write_text(out / "manifest.csv", buffer.getvalue())
    return out / "manifest.csv"
