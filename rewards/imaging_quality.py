"""Imaging quality (VBench, Huang et al., CVPR 2024): distortion (noise, blur, over-exposure) per
frame, scored by MUSIQ (Ke et al., ICCV 2021) trained on SPAQ, through the optional `pyiqa`
package as VBench does. Rewritten from VBench's published code (the `vbench` package pins old
transformers and numpy). Per video of T frames:

    frames whose longer side exceeds 512 are resized so that it is 512 (VBench's default
    preprocessing mode "longer": both sides scaled by 512 / max(H, W) and truncated, bilinear,
    no antialiasing), then score = 1/T · Σ_t MUSIQ(frame_t) / 100

(MUSIQ-SPAQ scores roughly 0..100). VBench's dimension score is the mean of the per-video scores.

VBench builds pyiqa's MUSIQ with the SPAQ checkpoint (`musiq_spaq_ckpt-358bb6af.pth`): `metric`
defaults to pyiqa's `musiq-spaq`, not `musiq` (pyiqa's KonIQ-trained default). pyiqa downloads the
checkpoint itself; offline, download it elsewhere and give its path as `weights` (VBench keeps it
in ~/.cache/vbench/pyiqa_model/). pyiqa's metric wrapper turns gradients off (or, as a loss,
averages the batch to one number), so the network it builds is called directly, as VBench calls
MUSIQ: per-frame scores, with gradients.

Differentiable (MUSIQ's patch extraction and resizing are torch ops). `pyiqa` is not a dependency
of this project: install it (`pip install pyiqa`) to use this reward.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewards import check_frames
from rewards.common import flatten_frames

LONGER_SIDE = 512  # VBench's "longer" mode: frames are shrunk until the longer side is at most this
VBENCH_WEIGHTS_URL = ("https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
                      "musiq_spaq_ckpt-358bb6af.pth")


def vbench_longer(images: torch.Tensor, longest: int = LONGER_SIDE) -> torch.Tensor:
    """(N, 3, H, W) -> the same, with both sides scaled by longest / max(H, W) (truncated, bilinear,
    no antialiasing, as VBench's torchvision Resize) when the longer side exceeds `longest`."""
    h, w = images.shape[-2:]
    if max(h, w) <= longest:
        return images
    scale = longest / max(h, w)
    return F.interpolate(images, size=(int(scale * h), int(scale * w)), mode="bilinear",
                         align_corners=False, antialias=False)


class ImagingQuality:
    differentiable = True
    maximised_by_still_video = False

    def __init__(self, metric: str = "musiq-spaq", weights: str | None = None,
                 frames: str | int = "all") -> None:
        try:
            import pyiqa  # optional: a large package with its own pins
        except ImportError as err:
            raise ImportError("imaging_quality scores frames with MUSIQ from the optional pyiqa "
                              "package, which is not installed: `pip install pyiqa`") from err
        self.frames = frames  # which frames the trainer decodes; see vader.protocols.Reward
        options: dict[str, Any] = {}
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"reward_fn.weights={weights!r}: no such file. Give the "
                                        f"path of a MUSIQ checkpoint (VBench's: {VBENCH_WEIGHTS_URL}) "
                                        "or null to let pyiqa download its own")
            options["pretrained_model_path"] = str(path)
        try:
            built = pyiqa.create_metric(metric, as_loss=False, device=torch.device("cpu"), **options)
        except (AssertionError, KeyError) as err:  # pyiqa's ways of saying "unknown metric"
            raise ValueError(f"reward_fn.metric={metric!r} is not a pyiqa metric ({err}); VBench "
                             "uses musiq-spaq") from err
        except Exception as err:  # offline download failures come in many classes
            raise RuntimeError(f"pyiqa could not build {metric!r} ({type(err).__name__}: {err}). "
                               f"Offline, download {VBENCH_WEIGHTS_URL} elsewhere and set "
                               "reward_fn.weights to its path") from err
        self.net = built.net.requires_grad_(False).eval()

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        weights = next(self.net.parameters())
        if weights.device != frames.device:  # the trainer moves only the backbone
            self.net.to(frames.device)
        images = vbench_longer(flatten_frames(frames).float())
        per_frame = self.net(images).float().view(frames.shape[0], frames.shape[1])
        score = (per_frame / 100).mean(1)
        return score, {"imaging_quality": score.detach().mean()}
