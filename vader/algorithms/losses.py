"""The algorithms' losses, as pure functions of tensors: reward shaping as VADER uses it
(maximise the reward, or pull it to a target value with an L1 distance, times a gradient
scale), GRPO's advantages, clipped policy objective and KL terms, Diffusion-DPO's logit and
loss, and Min-SNR weights."""
from __future__ import annotations

import torch


def reward_loss(rewards: torch.Tensor, target: float | None = None,
                grad_scale: float = 1.0) -> torch.Tensor:
    """Per-video loss `(B,)`; the trainer averages it."""
    if target is None:
        return -grad_scale * rewards
    return grad_scale * (rewards - target).abs()


# --- policy gradient (GRPO): pure functions of tensors, tested against their formulas ---------

def group_advantages(rewards: torch.Tensor, group_size: int, global_std: bool = False,
                     eps: float = 1e-4, clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (GRPO; Flow-GRPO's `stat_tracking`): for rewards `(N,)` laid out
    group by group, `(r − mean of its group) / (std + eps)` with the group's population std (or,
    `global_std`, the std of all N rewards, as Flow-GRPO's `global_std` option), clipped to
    ±`clip`. A group whose rewards are all equal carries no signal: its advantages are 0 and it is
    reported in `kept` (N,) as False. eps 1e-4 is Flow-GRPO's."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {group_size}")
    groups = rewards.float().reshape(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    std = rewards.float().std(correction=0) if global_std else groups.std(1, correction=0, keepdim=True)
    advantages = centred / (std + eps)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    kept = (groups != groups[:, :1]).any(1, keepdim=True).expand_as(groups)
    return advantages.masked_fill(~kept, 0.0).reshape(-1), kept.reshape(-1)


def ppo_clip_loss(advantages: torch.Tensor, ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped objective per sample (Schulman et al. 2017, eq. 7, as a loss):
    max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε)). At ratio 1 its gradient is that of −A·log p; where
    the clip binds it is flat."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped)


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) KL between two Gaussians of the same std, N(mean, std²) ‖ N(ref_mean, std²), per
    latent dimension: (mean − ref_mean)² / (2 std²), averaged over all but the first dimension
    (Flow-GRPO's KL to the reference model)."""
    return ((mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)).flatten(1).mean(1)


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """0.5 · mean((log p − log p_old)²): how far the policy moved since the rollout (DDPO's
    `approx_kl`)."""
    return 0.5 * ((log_prob - old_log_prob) ** 2).mean()


# --- preference pairs (Diffusion-DPO) -----------------------------------------------------

def diffusion_dpo_logit(error_chosen: torch.Tensor, error_chosen_ref: torch.Tensor,
                        error_rejected: torch.Tensor, error_rejected_ref: torch.Tensor,
                        beta: float = 5000.0) -> torch.Tensor:
    """Diffusion-DPO's logit per pair (Wallace et al. 2024, eq. 14):
    −β/2 · ((e_w − e_w,ref) − (e_l − e_l,ref)), each e the squared error of the model's
    prediction against its target averaged over every non-batch dimension, chosen (w) and
    rejected (l) noised with the same noise and timestep, the reference being the model with its
    LoRA off. β = 5000 is the paper's; diffusers' example (train_diffusion_dpo.py) drops the 1/2
    and uses 2500 for the same thing. Positive: the model prefers the chosen video more than the
    reference does."""
    return -0.5 * beta * ((error_chosen - error_chosen_ref) - (error_rejected - error_rejected_ref))


def diffusion_dpo_loss(logit: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) −log σ(logit), optionally times a per-pair weight; log 2 at logit 0 (a LoRA still at
    its zero init)."""
    loss = -torch.nn.functional.logsigmoid(logit)
    return loss if weight is None else loss * weight


def implicit_accuracy(logit: torch.Tensor) -> torch.Tensor:
    """Share of pairs where the model prefers the chosen video more than the reference does;
    ties (logit exactly 0) count half, so a model equal to its reference scores 0.5."""
    return ((logit > 0).float() + 0.5 * (logit == 0).float()).mean()


# --- supervised denoising (SFT) -------------------------------------------------------------

def min_snr_weight(alphas_cumprod: torch.Tensor, gamma: float,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, eq. 8 and its v form) for samples at noise
    levels ᾱ_t: with SNR = ᾱ/(1 − ᾱ), min(SNR, γ)/SNR for an epsilon loss and
    min(SNR, γ)/(SNR + 1) for a v loss, so every timestep weighs as an x0 loss clipped at γ."""
    snr = alphas_cumprod.float() / (1 - alphas_cumprod.float())
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"min-SNR weights for prediction_type={prediction_type!r}: epsilon and "
                     "v_prediction are supported")
