"""Training samples from video files, in an order that is a function of (seed, position): which
item each sample is, where its frames start, and (in the algorithms) its noise and timestep all
derive from its position in one endless stream, so N processes on a global batch see exactly
what one process would, and a resumed run continues the stream exactly.

    VideoItems   a torch Dataset: (position, item index) -> a Sample (frames or cached latents)
                 or a Failure (why it cannot be used); runs in DataLoader workers
    StepBatches  the batch sampler: this process's share of each micro-batch of each step
    make_loader  the DataLoader over both, with workers

A sample that cannot be used never raises in a worker: it comes back as a Failure, and the
algorithm's side (vader.data.stream) counts it and trains on the rest.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vader.data.cache import TensorCache, file_identity, make_key
from vader.data.clips import FrameRule, Unreadable, check_caption, read_clip, read_image
from vader.data.manifests import Clip, Pair
from vader.data.order import item_at
from vader.sampling.seeds import WINDOW, generator_seed

Item = Union[Clip, Pair]


@dataclass
class Sample:
    """A usable sample. `videos` holds one video for a clip, two (chosen, rejected) for a pair:
    frames `(T, C, H, W)` in [-1, 1] where they had to be decoded, latents `(C, T, h, w)` where
    the cache had them (`cached`); `keys` are their cache keys (None with the cache off)."""

    position: int
    text: str
    videos: list[torch.Tensor]
    keys: list[str | None]
    cached: list[bool]
    weight: float = 1.0
    # Image-to-video backbones: the conditioning image (C, H, W) in [-1, 1], the item's own or the
    # first frame of its (first) video; `first_frame`: taken from decoded frames, for the cache.
    image: torch.Tensor | None = None
    first_frame: bool = False


@dataclass
class Failure:
    """A sample that was skipped, and why (`reason` is one of vader.data.clips.REASONS)."""

    position: int
    reason: str
    message: str


@dataclass
class LoaderSettings:
    """How clips become frames, and where their latents are kept (`cache_root` None: nowhere)."""

    rule: FrameRule
    seed: int
    cache_root: Path | None = None
    encoder: str = ""  # vader.data.cache.encoder_identity of the backbone
    # With the cache on, each clip's window is drawn once (from the seed and the clip), so its
    # latents can be reused every epoch; off, a new window is drawn every time it is read.
    fixed_windows: bool = field(default=None)  # type: ignore[assignment]
    # The backbone conditions on an image (backbone.conditioning == "image"): each sample carries
    # one, and captions may be empty.
    images: bool = False

    def __post_init__(self):
        if self.fixed_windows is None:
            self.fixed_windows = self.cache_root is not None


class VideoItems(Dataset):
    """Clips or preference pairs, read by `(position, item index)`."""

    def __init__(self, items: list[Item], settings: LoaderSettings):
        self.items, self.settings = items, settings
        self.cache = TensorCache(settings.cache_root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, job: tuple[int, int]) -> Sample | Failure:
        position, index = job
        item = self.items[index]
        images = self.settings.images
        try:
            if isinstance(item, Clip):
                text = item.caption.strip() if images else check_caption(item.caption, item.video)
                spans = [(item.video, item.start, item.end)]
            else:
                text = item.prompt.strip() if images else check_caption(item.prompt, item.chosen)
                spans = [(item.chosen, None, None), (item.rejected, None, None)]
            own = getattr(item, "image", None)
            image = read_image(own, self.settings.rule.height, self.settings.rule.width) \
                if images and own is not None else None
            # A pair's two videos share their window, so they show the same stretch of time.
            window = self.window_seed(position, spans[0])
            read = [self.read(path, start, end, window) for path, start, end in spans]
            first_frame = images and own is None
            if first_frame:
                image = self.first_frame(read[0], spans[0], window)
        except Unreadable as err:
            return Failure(position, err.reason, str(err))
        return Sample(position, text, [r[0] for r in read], [r[1] for r in read],
                      [r[2] for r in read], getattr(item, "weight", 1.0), image, first_frame)

    def first_frame(self, read: tuple[torch.Tensor, str | None, bool],
                    span: tuple[Path, float | None, float | None], window: int) -> torch.Tensor:
        """The first frame of a clip: of its frames, or, where its latents came from the cache,
        the cached frame (the clip read again if the cache lacks it)."""
        video, key, cached = read
        if not cached:
            return video[0]
        frame = self.cache.load("first_frame", key)
        if frame is None:
            frame = read_clip(span[0], self.settings.rule, random.Random(window), span[1], span[2])[0]
        return frame

    def window_seed(self, position: int, span: tuple[Path, float | None, float | None]) -> int:
        s = self.settings
        if s.fixed_windows:
            return generator_seed(WINDOW, s.seed, int(make_key(span=[str(x) for x in span])[:15], 16))
        return generator_seed(WINDOW, s.seed, position)

    def key(self, path: Path, start: float | None, end: float | None, window: int) -> str | None:
        s = self.settings
        if s.cache_root is None or not path.is_file():
            return None  # a missing file is read_clip's to report
        return make_key(file=file_identity(path), start=start, end=end, rule=asdict(s.rule),
                        window=window if s.rule.window == "random" else None, encoder=s.encoder)

    def read(self, path: Path, start: float | None, end: float | None,
             window: int) -> tuple[torch.Tensor, str | None, bool]:
        key = self.key(path, start, end, window)
        if key is not None:
            latents = self.cache.load("latents", key)
            if latents is not None:
                return latents, key, True
        frames = read_clip(path, self.settings.rule, random.Random(window), start, end)
        return frames, key, False


class StepBatches(Sampler):
    """This process's micro-batches, step after step from `start_step`: the stream positions
    `(step · micro_steps + micro) · batch · world + rank · batch + [0, batch)`, each with the
    item the stream puts there (vader.data.order.item_at: every item once per epoch)."""

    def __init__(self, num_items: int, seed: int, start_step: int, micro_steps: int, batch: int,
                 rank: int = 0, world: int = 1):
        self.num_items, self.seed, self.start_step = num_items, seed, start_step
        self.micro_steps, self.batch, self.rank, self.world = micro_steps, batch, rank, world

    def positions(self, step: int, micro: int) -> range:
        first = ((step * self.micro_steps + micro) * self.world + self.rank) * self.batch
        return range(first, first + self.batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            for micro in range(self.micro_steps):
                yield [(g, item_at(self.num_items, self.seed, g)) for g in self.positions(step, micro)]
            step += 1


def _as_list(batch: list) -> list:
    return batch  # samples differ in kind (frames, latents, failures): the caller sorts them


def make_loader(dataset: VideoItems, batches: StepBatches, num_workers: int) -> DataLoader:
    """Decoding and resizing run in `num_workers` processes (0: in this one), a few micro-batches
    ahead of the training step."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      collate_fn=_as_list, prefetch_factor=2 if num_workers else None,
                      persistent_workers=False)
