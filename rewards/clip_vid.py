"""CLIP-VID: CLIP text-video alignment over 8 frames spread evenly across the clip, first and last
included, the name the video-alignment literature monitors. It is `clip_score`
(rewards/clip_score.py) with twice its default 4 scored frames, so the whole clip counts; every
other setting and all behaviour are clip_score's.
"""
from __future__ import annotations

from rewards.clip_score import ClipScore


class ClipVid(ClipScore):
    def __init__(self, pretrained: str = "openai/clip-vit-large-patch14", processor: str | None = None,
                 frames: str | int = "all", num_frames_scored: int | None = 8, aggregation: str = "mean",
                 logit_scale: bool = False, dtype: str = "fp32") -> None:
        super().__init__(pretrained=pretrained, processor=processor, frames=frames,
                         num_frames_scored=num_frames_scored, aggregation=aggregation,
                         logit_scale=logit_scale, dtype=dtype)
