"""The training side of a dataset, for the algorithms that learn from videos (SFT, DPO): each
step's micro-batches with their latents on the device, the caption embeddings, and the
accounting of samples that could not be used.

Bad data never stops a run: a missing, empty, truncated or undecodable file, a video too short
for the frames asked, an empty caption, each is skipped, counted by reason on every process,
warned about (the first few of each reason), logged every step (`skipped/<reason>`, cumulative)
and reported in the run's summary. Only a dataset where nothing works stops the run: once as
many samples have failed as the dataset has items and none has loaded, with an error naming the
first failures.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from vader.data.cache import TensorCache, encoder_identity, make_key
from vader.data.clips import REASONS, FrameRule
from vader.data.image_prompts import ImagePrompt
from vader.data.loader import (Failure, Item, LoaderSettings, Sample, StepBatches, VideoItems,
                               make_loader)
from vader.protocols import Backbone

WARNINGS_PER_REASON = 3  # then the counts alone (metrics.jsonl, the summary)


class DataError(ValueError):
    """The dataset yields nothing usable."""


class TrainingData:
    def __init__(self, items: list[Item], settings: LoaderSettings, backbone: Backbone,
                 accelerator: Any, batch: int, micro_steps: int, num_workers: int = 2):
        self.items, self.settings, self.backbone, self.acc = items, settings, backbone, accelerator
        self.batch, self.micro_steps, self.num_workers = batch, micro_steps, num_workers
        self.dataset = VideoItems(items, settings)
        self.cache = TensorCache(settings.cache_root)
        self.text: OrderedDict[str, torch.Tensor] = OrderedDict()  # a few captions in memory
        self.next_step: int | None = None
        self.iterator = None
        self.counts = {"loaded": 0, **{r: 0 for r in REASONS}}  # all processes, since the start
        self.encoded = 0   # clips this process encoded (cache misses)
        self.first_failures: list[str] = []  # this process's, for the everything-failed error
        self.warned = {r: 0 for r in REASONS}

    # --- the stream -------------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[list[Sample | Failure]]:
        if self.iterator is None or self.next_step != step:  # the first step, or a resume
            self.iterator = iter(make_loader(self.dataset, StepBatches(
                len(self.items), self.settings.seed, step, self.micro_steps, self.batch,
                self.acc.process_index, self.acc.num_processes), self.num_workers))
        self.next_step = step + 1
        return [next(self.iterator) for _ in range(self.micro_steps)]

    def step(self, step: int) -> tuple[list[list[Sample]], int]:
        """Step `step`'s micro-batches for this process, each sample's videos as latents on the
        device (encoded now, and cached, where the cache did not have them), and the number of
        usable samples in the step over all processes (0: nothing to train on this step)."""
        usable, local = [], torch.zeros(1 + len(REASONS), device=self.acc.device)
        for samples in self._micro_batches(step):
            kept = []
            for s in samples:
                if isinstance(s, Failure):
                    self._record(s)
                    local[1 + REASONS.index(s.reason)] += 1
                else:
                    kept.append(s)
            local[0] += len(kept)
            self._encode(kept)
            usable.append(kept)
        total = self.acc.reduce(local, "sum") if self.acc.num_processes > 1 else local
        step_counts = [int(v) for v in total.tolist()]
        for name, v in zip(self.counts, step_counts):
            self.counts[name] += v
        failed = sum(self.counts[r] for r in REASONS)
        if self.counts["loaded"] == 0 and failed >= len(self.items):
            raise DataError(
                f"no sample of the dataset could be used: {failed} tried, all failed "
                f"({self.summary_line()}). First failures here: "
                + "; ".join(self.first_failures)
                + ". Check dataset.path and the files it names (docs/data.md, 'Bad data').")
        return usable, step_counts[0]

    def _record(self, failure: Failure) -> None:
        if len(self.first_failures) < 5:
            self.first_failures.append(failure.message)
        if self.warned[failure.reason] < WARNINGS_PER_REASON:
            self.warned[failure.reason] += 1
            more = (" (further ones of this kind are counted, not shown)"
                    if self.warned[failure.reason] == WARNINGS_PER_REASON else "")
            print(f"data: skipped {failure.message}{more}", file=sys.stderr, flush=True)

    def _encode(self, samples: list[Sample]) -> None:
        """Frames to latents on the device (the frozen VAE, no gradients), written to the cache;
        cached latents just move to the device."""
        device = self.acc.device
        todo = [(s, i) for s in samples for i, c in enumerate(s.cached) if not c]
        for lo in range(0, len(todo), self.batch):
            part = todo[lo:lo + self.batch]
            frames = torch.stack([s.videos[i] for s, i in part]).to(device)
            with torch.no_grad():
                latents = self.backbone.encode((frames.float() + 1) / 2)
            for (s, i), z in zip(part, latents):
                s.videos[i] = z
                if s.keys[i] is not None:
                    self.cache.save("latents", s.keys[i], z)
                    if i == 0 and s.first_frame:  # the frames are gone once cached: keep the first
                        self.cache.save("first_frame", s.keys[i], s.image)
            self.encoded += len(part)
        for s in samples:
            s.videos = [v.to(device) for v in s.videos]

    # --- captions ---------------------------------------------------------------------------
    @staticmethod
    def prompt(sample: Sample) -> str:
        """What a sample is conditioned on: its caption, or, with a conditioning image, an
        ImagePrompt carrying the image's pixels (in [0, 1]) and named by the sample's position."""
        if sample.image is None:
            return sample.text
        return ImagePrompt(sample.text, f"sample {sample.position}", (sample.image.float().cpu() + 1) / 2)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """The conditioning of `texts`, each encoded on its own (so its value does not depend on
        which others share its batch); captions cached on disk and, for the last few, in memory.
        Image prompts are encoded every time: their conditioning holds the image's number in the
        backbone's table, which another process or run numbers differently."""
        rows = []
        for text in texts:
            if hasattr(text, "image"):
                with torch.no_grad():
                    rows.append(self.backbone.encode_prompts([text])[0].to(self.acc.device))
                continue
            if text not in self.text:
                key = make_key(text=text, encoder=self.settings.encoder)
                value = self.cache.load("text", key)
                if value is None:
                    with torch.no_grad():
                        value = self.backbone.encode_prompts([text])[0]
                    self.cache.save("text", key, value)
                self.text[text] = value.to(self.acc.device)
                if len(self.text) > 256:
                    self.text.popitem(last=False)
            self.text.move_to_end(text)
            rows.append(self.text[text])
        return torch.stack(rows)

    # --- reporting and resume ---------------------------------------------------------------
    def numbers(self) -> dict[str, float]:
        return {f"skipped/{r}": self.counts[r] for r in REASONS}

    def summary_line(self) -> str:
        skipped = {r: self.counts[r] for r in REASONS if self.counts[r]}
        return (f"{self.counts['loaded']} samples loaded, "
                + (f"{sum(skipped.values())} skipped: "
                   + ", ".join(f"{r} {n}" for r, n in skipped.items()) if skipped else "none skipped"))

    def report(self) -> dict[str, Any]:
        return {"items": len(self.items), "loaded": self.counts["loaded"],
                "skipped": {r: self.counts[r] for r in REASONS},
                "cache": str(self.settings.cache_root) if self.settings.cache_root else None}

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update(state.get("counts", {}))


def cache_root(setting: bool, folder: str | None, run_dir: Path | None) -> Path | None:
    """`data.cache`: off -> None; on -> `data.cache_dir`, or `<run dir>/cache`."""
    if not setting:
        return None
    if folder is not None:
        return Path(folder)
    if run_dir is None:
        raise ValueError("data.cache=true needs a run directory or data.cache_dir")
    return Path(run_dir) / "cache"


def training_data(run: Any) -> TrainingData:
    """The TrainingData of a run (vader.protocols.Run) from its settings: frames by the
    top-level num_frames/height/width and the `data` block, one micro-batch of
    `train_batch_size` per process per micro-step."""
    cfg, data = run.cfg, run.cfg.data
    settings = LoaderSettings(
        frame_rule(cfg), cfg.seed, cache_root(data.cache, data.cache_dir, run.run_dir),
        encoder_identity(dict(cfg.backbone)),
        images=getattr(run.backbone, "conditioning", "text") == "image")
    return TrainingData(run.data, settings, run.backbone, run.accelerator, cfg.train_batch_size,
                        cfg.gradient_accumulation_steps, data.num_workers)


def frame_rule(cfg: Any) -> FrameRule:
    """The frame-sampling rule of a run's settings; raises ValueError naming a bad `data.*` key."""
    data = cfg.data
    if data.num_workers < 0:
        raise ValueError(f"data.num_workers={data.num_workers}: use 0 (decode in the trainer) or more")
    try:
        return FrameRule(cfg.num_frames, cfg.height, cfg.width, stride=data.frame_stride,
                         fps=data.fps, window=data.window, short=data.short_videos)
    except ValueError as err:  # named as the user sets them
        names = {"FrameRule.stride": "data.frame_stride", "FrameRule.short": "data.short_videos",
                 "FrameRule.window": "data.window", "FrameRule.fps": "data.fps",
                 "FrameRule.": ""}
        message = str(err)
        for old, new in names.items():
            message = message.replace(old, new)
        raise ValueError(message) from None
