"""Framing: composition from where the subject sits in each frame and how level the picture stays.

Subject localisation (our design): a soft subject map per frame, turned into a distribution over
positions by keeping only what stands out, `relu(map - its frame mean)`, normalised to sum to 1
(a featureless frame gets the uniform distribution). Two localisers make the map:
- `dino`: the last layer's self-attention from DINOv2's CLS token to every patch, averaged over
  heads (Caron et al. 2021 showed these maps segment the salient object; DINOv2 through
  transformers' Dinov2Model in eager attention, the only kind that returns the weights). The
  whole frame goes in, not the processor's centre crop (composition is about the edges too):
  resized so the shorter side spans the checkpoint's crop size, rounded to whole patches.
  DINOv2 without registers puts some attention on a few background "high-norm" patches
  (Darcet et al. 2024), which pulls the centroid towards them.
- `saliency`: weight-free frequency-tuned saliency (Achanta et al. 2009; in RGB, not Lab): how
  far each pixel of a lightly blurred frame is from the frame's mean colour. Good on a subject
  against a plain background, weak on clutter; for tests and offline runs.
From the distribution p, per frame: the centroid c = sum p(x) x (soft, differentiable) and
- thirds = -|c - nearest rule-of-thirds intersection| / frame diagonal, in [-1/3, 0] (pixel
  units, so a wide frame is measured as seen; a centred subject gets -1/6);
- safe = the share of p inside the central box that leaves `safe_margin` of each side, in [0, 1].
Horizon: each frame's dominant line orientation from the structure tensor of kornia's spatial
gradients (summed over the frame, each pixel weighed by its squared gradient, so the strongest
edges dominate), as a doubled-angle vector whose length is the tensor's coherence (0 when no
orientation dominates). Its change between consecutive frames is sqrt(|u||v| - u.v) / sqrt(2):
|sin| of the angle turned, times the geometric mean of the coherences, so a frame without
dominant lines neither counts as a roll nor hides one fully; horizon = minus its mean, in [-1, 0].
Saliency and horizon run on frames downscaled to a shorter side of 64 (WORK_SIDE): cheap, and
fine texture that would swamp the dominant lines is averaged away.

Reward = thirds_weight * thirds + safe_weight * safe (both averaged over frames) + horizon_weight
* horizon. The defaults (3, 1, 1: each term spans about 1) and the margin are our choices, not a
paper's. Differentiable: every term carries gradient to the frames (through the attention or
saliency map into the centroid and the safe mass, and through the gradients into the structure
tensor); the safe box and the thirds points themselves are fixed positions.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rewards import check_frames, luma, safe_sqrt
from rewards.common import channel_constant, flatten_frames
from rewards.flow import check_consecutive
from rewards.identity_lock import load_dinov2

LOCALISERS = ("dino", "saliency")
WORK_SIDE = 64   # shorter side for saliency and horizon (frames are only ever shrunk to it)
EPS = 1e-6


def subject_distribution(raw: torch.Tensor) -> torch.Tensor:
    """(N, h, w) non-negative subject map -> (N, h, w) distribution of what lies above the frame's
    mean (the diffuse floor of a map would pull every centroid to the middle)."""
    mass = F.relu(raw - raw.mean((-2, -1), keepdim=True)) + EPS
    return mass / mass.sum((-2, -1), keepdim=True)


def grid(n: int, like: torch.Tensor) -> torch.Tensor:
    """Centres of n cells spanning [0, 1]."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n


def centroid(p: torch.Tensor) -> torch.Tensor:
    """(N, h, w) distribution -> (N, 2): its mean position (x, y), each in [0, 1]."""
    xs, ys = grid(p.shape[-1], p), grid(p.shape[-2], p)
    return torch.stack([(p.sum(-2) * xs).sum(-1), (p.sum(-1) * ys).sum(-1)], -1)


def thirds_term(c: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2) centroids -> (N,) minus the distance to the nearest thirds intersection over the
    frame's diagonal."""
    points = torch.tensor([[x, y] for x in (1 / 3, 2 / 3) for y in (1 / 3, 2 / 3)],
                          device=c.device, dtype=c.dtype)
    scale = torch.tensor([width, height], device=c.device, dtype=c.dtype)
    squared = (((c[:, None] - points) * scale).square().sum(-1)).amin(-1)
    return -safe_sqrt(squared, EPS) / (width ** 2 + height ** 2) ** 0.5


def safe_mass(p: torch.Tensor, margin: float) -> torch.Tensor:
    """(N, h, w) distribution -> (N,) its share at cell centres inside the central safe box."""
    inside_x = (grid(p.shape[-1], p) - 0.5).abs() <= 0.5 - margin
    inside_y = (grid(p.shape[-2], p) - 0.5).abs() <= 0.5 - margin
    return (p * (inside_y[:, None] & inside_x[None]).to(p.dtype)).sum((-2, -1))


def line_orientation(gray: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 2): the dominant line orientation theta as (cos 2 theta, sin 2 theta)
    times the coherence. theta is counter-clockwise from horizontal as seen (image y points down);
    the doubled angle makes a line and the same line turned by 180 degrees one vector."""
    import kornia
    g = kornia.filters.spatial_gradient(gray)[:, 0]             # (N, 2, H, W): d/dx, d/dy
    gx, gy = g[:, 0], g[:, 1]
    jxx, jyy, jxy = (gx * gx).mean((-2, -1)), (gy * gy).mean((-2, -1)), (gx * gy).mean((-2, -1))
    # The gradient's doubled angle is (jxx - jyy, 2 jxy); a line runs across its gradient (+90
    # degrees, negating the doubled vector) and seen with y up the sine changes sign.
    return torch.stack([jyy - jxx, 2 * jxy], -1) / (jxx + jyy + EPS)[:, None]


def orientation_change(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., 2) doubled-angle vectors -> (...): |sin(angle turned)| * sqrt(coherence_u * coherence_v)."""
    # Exact norms (torch's norm has a zero gradient at 0): an epsilon there would outweigh
    # |u||v|(1 - cos) for turns of a degree or two. The small epsilon of the outer root keeps its
    # gradient finite at 0 (a still video) and biases a 1-degree turn by under 1%.
    norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
    return safe_sqrt(F.relu(norms - (u * v).sum(-1)) / 2, 1e-8)


def shrink(images: torch.Tensor, side: int) -> torch.Tensor:
    """Downscale (antialiased) so the shorter side is `side`; never upscale."""
    h, w = images.shape[-2:]
    if min(h, w) <= side:
        return images
    size = (round(h * side / min(h, w)), round(w * side / min(h, w)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def saliency_map(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, H, W): frequency-tuned saliency, the colour distance of each
    pixel (Gaussian blur, sigma 1) from the frame's mean colour."""
    import kornia
    blurred = kornia.filters.gaussian_blur2d(images, (5, 5), (1.0, 1.0))
    return safe_sqrt((blurred - images.mean((-2, -1), keepdim=True)).square().sum(1), EPS)


class Framing:
    differentiable = True
    # A still video of a well-framed shot is the best case: the thirds and safe terms are per
    # frame, so holding the best frame keeps them at their best, and it never rolls (horizon 0).
    maximised_by_still_video = True

    def __init__(self, localiser: str = "dino", pretrained: str = "facebook/dinov2-small",
                 frames: str | int = "all", thirds_weight: float = 3.0, safe_weight: float = 1.0,
                 horizon_weight: float = 1.0, safe_margin: float = 0.1, dtype: str = "fp32") -> None:
        if localiser not in LOCALISERS:
            raise ValueError(f"framing localiser={localiser!r}: use one of {LOCALISERS}")
        if not 0 <= safe_margin < 0.5:
            raise ValueError(f"framing safe_margin={safe_margin}: a share of each side in [0, 0.5)")
        if horizon_weight:  # the horizon compares consecutive frames
            check_consecutive("framing (horizon_weight > 0)", frames)
        self.localiser, self.frames, self.safe_margin = localiser, frames, safe_margin
        self.weights = (thirds_weight, safe_weight, horizon_weight)
        if localiser == "dino":
            self.model, self.settings = load_dinov2(pretrained, dtype, attn_implementation="eager")
            # The model is shared with identity_lock / novelty_after_k (one per process), which
            # may have loaded it with SDPA; eager gives the same outputs and returns the weights.
            if self.model.config._attn_implementation != "eager":
                self.model.set_attn_implementation("eager")

    def dino_attention(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, h, w): last-layer CLS-to-patch attention, mean over heads."""
        weights = next(self.model.parameters())
        if weights.device != images.device:
            self.model.to(images.device)  # the model follows the frames (the trainer moves the backbone)
        s, patch = self.settings, self.model.config.patch_size
        h, w = images.shape[-2:]
        scale = (s.crop or s.size) / min(h, w)
        gh, gw = max(1, round(h * scale / patch)), max(1, round(w * scale / patch))
        pixels = F.interpolate(images.float(), size=(gh * patch, gw * patch), mode=s.mode,
                               align_corners=False, antialias=s.mode in ("bilinear", "bicubic"))
        pixels = (pixels - channel_constant(s.mean, pixels.device, pixels.dtype)) \
            / channel_constant(s.std, pixels.device, pixels.dtype)
        out = self.model(pixel_values=pixels.to(weights.dtype), output_attentions=True)
        return out.attentions[-1][:, :, 0, 1:].float().mean(1).view(-1, gh, gw)

    def subject(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, h, w) subject distribution (on the patch grid for dino)."""
        if self.localiser == "dino":
            return subject_distribution(self.dino_attention(images))
        return subject_distribution(saliency_map(shrink(images.float(), WORK_SIDE)))

    def __call__(self, frames: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, Any]]:
        check_frames(frames, prompts)
        b, t, _, height, width = frames.shape
        images = flatten_frames(frames).float()
        p = self.subject(images)
        thirds = thirds_term(centroid(p), height, width).view(b, t).mean(1)
        safe = safe_mass(p, self.safe_margin).view(b, t).mean(1)
        lines = line_orientation(luma(shrink(images, WORK_SIDE)).unsqueeze(1)).view(b, t, 2)
        if t > 1:
            horizon = -orientation_change(lines[:, 1:], lines[:, :-1]).mean(1)
        else:  # one frame: no change to see
            horizon = torch.zeros_like(thirds)
        wt, ws, wh = self.weights
        rewards = wt * thirds + ws * safe + wh * horizon
        return rewards.to(frames.dtype), {"framing_thirds": thirds.detach().mean(),
                                          "framing_safe_mass": safe.detach().mean(),
                                          "framing_horizon": horizon.detach().mean()}
