"""Small video datasets the tests write themselves, in the layouts the readers take: captioned
clips of a coloured square moving across a plain background, and preference pairs whose chosen
and rejected videos differ in one visible property (brightness)."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from vader.io.video import save_video

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 1.0, 0.1), "blue": (0.1, 0.2, 1.0),
           "yellow": (1.0, 1.0, 0.1), "cyan": (0.1, 1.0, 1.0), "magenta": (1.0, 0.1, 1.0),
           "orange": (1.0, 0.55, 0.0), "white": (1.0, 1.0, 1.0)}


def square_video(colour: str, frames: int = 12, size: int = 32, brightness: float = 0.5,
                 step: int = 2) -> torch.Tensor:
    """(T, 3, size, size) in [0, 1]: a `colour` square of side size/3 sliding right by `step`
    pixels a frame over a grey background of `brightness`."""
    video = torch.full((frames, 3, size, size), brightness)
    side = size // 3
    rgb = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    for t in range(frames):
        x = (t * step) % (size - side)
        video[t, :, size // 3:size // 3 + side, x:x + side] = rgb
    return video


def write_clip_folder(root: Path, colours: list[str], frames: int = 12, size: int = 32,
                      fps: int = 8, steps: tuple[int, ...] = (2,)) -> Path:
    """`root/<i>_<colour>.mp4` with the caption 'a <colour> square moves right' beside each,
    one clip per colour and speed in `steps` (pixels a frame)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (colour, step) in enumerate((c, s) for s in steps for c in colours):
        save_video(square_video(colour, frames, size, step=step), root / f"{i:03d}_{colour}.mp4",
                   fps=fps)
        (root / f"{i:03d}_{colour}.txt").write_text(f"a {colour} square moves right\n")
    return root


def write_pairs(root: Path, colours: list[str], frames: int = 12, size: int = 32,
                fps: int = 8) -> Path:
    """`root/pairs.csv`: per colour, the prompt 'a <colour> square moves right', chosen the
    video on a bright background, rejected the same on a dark one."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, colour in enumerate(colours):
        for name, level in (("bright", 0.85), ("dark", 0.15)):
            save_video(square_video(colour, frames, size, brightness=level),
                       root / f"{i:03d}_{name}.mp4", fps=fps)
        rows.append({"prompt": f"a {colour} square moves right", "chosen": f"{i:03d}_bright.mp4",
                     "rejected": f"{i:03d}_dark.mp4"})
    with (root / "pairs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "pairs.csv"


def write_image_video(root: Path, colours: list[str], frames: int = 12, size: int = 32,
                      fps: int = 8, bad: bool = True, steps: tuple[int, ...] = (2,)) -> Path:
    """`root/samples.csv` for dataset=image_video: per colour and speed in `steps` a sliding-square
    video, the odd ones with their own conditioning image (a still of the square where it starts,
    as a png), the even ones with none (the clip's first frame is the image); captions on every
    other row. With `bad`, three rows that cannot be used: an image that does not exist, an image
    that is not one, and a video that is not one."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (colour, step) in enumerate((c, s) for s in steps for c in colours):
        video = square_video(colour, frames, size, step=step)
        save_video(video, root / f"{i:03d}_{colour}.mp4", fps=fps)
        image = ""
        if i % 2:
            image = f"{i:03d}_{colour}.png"
            Image.fromarray((video[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(root / image)
        rows.append({"video": f"{i:03d}_{colour}.mp4", "image": image,
                     "caption": f"a {colour} square moves right" if i % 2 == 0 else ""})
    if bad:
        (root / "not_an_image.png").write_bytes(b"this is text, not a png")
        (root / "not_a_video.mp4").write_bytes(b"this is text, not an mp4")
        first = rows[0]["video"]
        rows += [{"video": first, "image": "missing.png", "caption": "no image"},
                 {"video": first, "image": "not_an_image.png", "caption": "a broken image"},
                 {"video": "not_a_video.mp4", "image": "", "caption": "a broken video"}]
    with (root / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "samples.csv"
