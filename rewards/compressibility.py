"""JPEG compressibility, DDPO's reward without gradients (Black et al. 2023, "Training Diffusion
Models with Reinforcement Learning", `jpeg_compressibility`): the size of each frame saved as a
quality-95 JPEG, in kilobytes, averaged over the frames; the reward is minus that size
(`mode=compressible`: flat, simple frames score high) or the size itself (`incompressible`:
busy, detailed frames). Weight-free.

An encoder's output size has no gradient, so this reward declares `differentiable = False`:
reward-gradient training refuses it, GRPO trains on it (`algorithm=grpo`), and evaluation reports
it like any other. Encoding is torchvision's libjpeg (`torchvision.io.encode_jpeg`); sizes are
of 8-bit frames, as a saved video would hold them.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.io import encode_jpeg

from rewards import check_frames

MODES = ("compressible", "incompressible")


class Compressibility:
    differentiable = False

    def __init__(self, frames: str | int = "all", mode: str = "compressible",
                 quality: int = 95) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: choose one of {MODES}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality={quality}: JPEG quality is 1 to 100 (DDPO: 95)")
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        self.mode, self.quality = mode, quality

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        b, t = pixels.shape[:2]
        encoded = encode_jpeg(list(pixels.flatten(0, 1)), quality=self.quality)
        kilobytes = torch.tensor([len(e) / 1000 for e in encoded]).view(b, t).mean(1)
        rewards = -kilobytes if self.mode == "compressible" else kilobytes
        return rewards.to(frames.device), {"jpeg_kb": kilobytes.mean()}
