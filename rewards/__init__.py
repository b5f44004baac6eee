"""Rewards: each scores videos `(B, T, C, H, W)` in [0, 1] and follows `vader.protocols.Reward`.

To add a reward, write one module here with one class (constructor takes plain keyword
arguments, including `frames`; class attribute `differentiable`; `__call__(frames, prompts)`
returning `(rewards (B,), info)`), and one YAML in `conf/reward_fn/` whose `_target_` names that
class. Keep heavy imports (model weights, big libraries) inside the constructor so importing this
package stays cheap. `tests/test_rewards_basic.py` checks every YAML in `conf/reward_fn/`.

The weight-free rewards (`brightness`, `colorfulness`, `contrast`) need no downloads; tests and
offline smoke runs use them. The helpers below are shared by them.
"""
from __future__ import annotations

import torch


def check_frames(frames: torch.Tensor, prompts: list[str]) -> None:
    """Raise ValueError unless `frames` is float `(B, T, 3, H, W)` with one prompt per video.

    A wrong layout (say `(B, C, T, H, W)` straight from a latent-shaped decode) would otherwise
    score silently and give nonsense gradients.
    """
    if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
        got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"expected frames of shape (B, T, C, H, W) with C=3, got {got}")
    if not frames.is_floating_point():
        raise ValueError(f"expected float frames in [0, 1], got dtype {frames.dtype}")
    if len(prompts) != frames.shape[0]:
        raise ValueError(f"expected {frames.shape[0]} prompts (one per video), got {len(prompts)}")


def luma(frames: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma `(..., H, W)` of RGB frames `(..., 3, H, W)`: videos `(B, T, 3, H, W)` or
    images `(N, 3, H, W)`."""
    r, g, b = frames.unbind(dim=-3)
    return 0.299 * r + 0.587 * g + 0.114 * b


def safe_sqrt(x: torch.Tensor, eps: float) -> torch.Tensor:
    """sqrt(x) with a finite gradient at 0 (sqrt's is infinite there, NaN once chained), still
    exactly 0 at 0; off by at most sqrt(eps) elsewhere."""
    return (x + eps).sqrt() - eps ** 0.5
