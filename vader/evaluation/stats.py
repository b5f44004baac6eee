"""The numbers of an evaluation: per-video motion, per-prompt diversity, and the paired comparison
of a tuned model against its base (win rate and mean difference, each with a bootstrap CI).

Pure functions of tensors and row dicts, so they are tested on videos the tests make themselves.
The bootstrap uses a fixed generator, so the same rows always give the same intervals.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.nn.functional as F

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
PIXEL_EMBED_SIZE = 16  # frames pooled to 16x16: enough to tell videos apart, cheap on any device


def motion(videos: torch.Tensor) -> torch.Tensor:
    """Mean absolute frame-to-frame change of `(B, T, C, H, W)` frames in [0, 1], per video: 0 for
    a still video, and larger the more pixels change between frames. It is what shows a run that
    froze its videos to please a consistency reward."""
    if videos.ndim != 5:
        raise ValueError(f"expected videos (B, T, C, H, W), got {tuple(videos.shape)}")
    if videos.shape[1] < 2:
        return torch.zeros(videos.shape[0], device=videos.device)
    return (videos[:, 1:].float() - videos[:, :-1].float()).abs().flatten(1).mean(1)


def pixel_embedding(videos: torch.Tensor) -> torch.Tensor:
    """A weight-free video embedding: every frame average-pooled to 16x16, concatenated. Two videos
    get the same embedding only if they agree at that scale, which is what diversity asks about."""
    b, t, c, h, w = videos.shape
    pooled = F.adaptive_avg_pool2d(videos.float().reshape(b * t, c, h, w), PIXEL_EMBED_SIZE)
    return pooled.reshape(b, -1)


def diversity(embeddings: torch.Tensor) -> float:
    """Mean per-dimension variance of the embeddings of one prompt's videos across seeds `(S, D)`:
    0 when every seed gave the same video, positive otherwise. Needs at least two seeds."""
    if embeddings.shape[0] < 2:
        raise ValueError("diversity needs at least two seeds per prompt (num_val_seeds >= 2)")
    return embeddings.double().var(0, unbiased=True).mean().item()


def _percentile_interval(stats: torch.Tensor) -> tuple[float, float]:
    alpha = (1 - CONFIDENCE) / 2
    low, high = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=stats.dtype)).tolist()
    return low, high


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion. Unlike a bootstrap it does not collapse to a point
    when every pair is a win (8 wins of 8 give [0.68, 1], not [1, 1])."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_comparison(base: list[float], tuned: list[float]) -> dict[str, Any]:
    """Tuned against base over paired samples (same prompt, same seed). A pair is a win, a tie
    (exactly equal scores) or a loss; the win rate counts a tie as half and gets a 95% Wilson
    interval; the mean difference gets a percentile-bootstrap 95% interval over pairs. The
    verdict is "tie" when every pair ties, "tuned" or "base" when the win-rate interval excludes
    0.5, else "inconclusive"."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"paired comparison needs equal, non-empty lists; got {len(base)} and {len(tuned)}")
    b = torch.tensor(base, dtype=torch.float64)
    t = torch.tensor(tuned, dtype=torch.float64)
    delta = t - b
    outcome = (delta > 0).double() + 0.5 * (delta == 0).double()
    n = len(base)
    gen = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    idx = torch.randint(0, n, (BOOTSTRAP_SAMPLES, n), generator=gen)
    delta_low, delta_high = _percentile_interval(delta[idx].mean(1))
    wins, ties = int((delta > 0).sum()), int((delta == 0).sum())
    win_low, win_high = wilson_interval(wins + 0.5 * ties, n)
    if not torch.isfinite(delta).all():
        verdict = "inconclusive"  # a NaN score makes every pair comparison False
    elif ties == n:
        verdict = "tie"
    elif win_low > 0.5:
        verdict = "tuned"
    elif win_high < 0.5:
        verdict = "base"
    else:
        verdict = "inconclusive"
    return {"win_rate": outcome.mean().item(), "ci_low": win_low, "ci_high": win_high,
            "wins": wins, "ties": ties, "losses": n - wins - ties,
            "mean_delta": delta.mean().item(), "delta_ci_low": delta_low,
            "delta_ci_high": delta_high, "verdict": verdict, "pairs": n}


def _mean_std(values: list[float]) -> dict[str, float]:
    x = torch.tensor(values, dtype=torch.float64)
    std = x.std(unbiased=True).item() if len(values) > 1 else 0.0
    return {"mean": x.mean().item(), "std": std}


def summarise(rows: list[dict[str, Any]], metric_keys: list[str], models: list[str],
              embeddings: dict[tuple[str, int, int], torch.Tensor]) -> dict[str, Any]:
    """`per_model` (mean and std of every metric, and diversity) and `comparison` (tuned against
    base for every metric) from one row per video. `embeddings` maps (model, prompt_index, seed)
    to that video's embedding."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    per_model: dict[str, dict] = {}
    for model in models:
        mine = sorted(by_model[model], key=lambda r: (r["prompt_index"], r["seed"]))
        stats: dict[str, Any] = {key: _mean_std([r[key] for r in mine]) for key in metric_keys}
        per_prompt = defaultdict(list)
        for r in mine:
            per_prompt[r["prompt_index"]].append(embeddings[(model, r["prompt_index"], r["seed"])])
        if all(len(v) >= 2 for v in per_prompt.values()):
            stats["diversity"] = sum(diversity(torch.stack(v)) for v in per_prompt.values()) / len(per_prompt)
        else:
            stats["diversity"] = None  # one seed per prompt: there is nothing to compare
        per_model[model] = stats
    comparison = {}
    if "base" in models and "tuned" in models:
        key_of: Callable[[dict], tuple] = lambda r: (r["prompt_index"], r["seed"])  # noqa: E731
        base = {key_of(r): r for r in by_model["base"]}
        tuned = {key_of(r): r for r in by_model["tuned"]}
        pairs = sorted(set(base) & set(tuned))
        for key in metric_keys:
            comparison[key] = paired_comparison([base[p][key] for p in pairs],
                                                [tuned[p][key] for p in pairs])
    return {"per_model": per_model, "comparison": comparison}


# A tuned model whose trained reward rose while its motion or its diversity fell by more than
# this share of the base model's is flagged: rewards a frozen or collapsed video maximises (smooth,
# consistent, identity-locked) are won that way first, and 30% is far outside the seed-to-seed
# spread of either measure in this project's evaluations (a few percent on the world model).
HACKING_DROP = 0.3


def hacking_flags(summary: dict[str, Any], drop: float = HACKING_DROP) -> list[str]:
    """"possible reward hacking: ..." for each guard measure (motion, diversity) that fell by
    more than `drop` of the base model's value while the trained reward's mean rose."""
    per_model = summary["per_model"]
    if not {"base", "tuned"} <= set(per_model):
        return []
    key = f"reward/{summary['train_reward']}"
    before, after = per_model["base"][key]["mean"], per_model["tuned"][key]["mean"]
    if not after > before:
        return []
    flags = []
    for measure in ("motion", "diversity"):
        base, tuned = per_model["base"].get(measure), per_model["tuned"].get(measure)
        base, tuned = (v["mean"] if isinstance(v, dict) else v for v in (base, tuned))
        if base is None or tuned is None or not base > 0:
            continue
        if tuned < (1 - drop) * base:
            flags.append(f"possible reward hacking: {summary['train_reward']} rose {before:.4g} -> "
                         f"{after:.4g} while {measure} fell {base:.4g} -> {tuned:.4g} "
                         f"({tuned / base - 1:+.0%}; flagged below -{drop:.0%})")
    return flags


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value
