"""Diffusion-DPO's loss as pure functions (vader/algorithms/losses.py), against hand-computed
values: log 2 and accuracy 0.5 at the reference, swapping the pair negates the logit."""
from __future__ import annotations

import math

import torch

def test_dpo_at_the_reference_is_log_2_with_ties_counted_half():
    from vader.algorithms.losses import diffusion_dpo_logit, diffusion_dpo_loss, implicit_accuracy
    errors = torch.tensor([0.3, 0.7, 1.1])
    logit = diffusion_dpo_logit(errors, errors, errors * 2, errors * 2)  # model == reference
    assert torch.equal(logit, torch.zeros(3))
    torch.testing.assert_close(diffusion_dpo_loss(logit), torch.full((3,), math.log(2)))
    assert implicit_accuracy(logit).item() == 0.5


def test_dpo_logit_by_hand_and_swapping_the_pair_negates_it():
    from vader.algorithms.losses import diffusion_dpo_logit, diffusion_dpo_loss, implicit_accuracy
    w, w_ref, l, l_ref = (torch.tensor([v]) for v in (0.10, 0.12, 0.30, 0.25))
    logit = diffusion_dpo_logit(w, w_ref, l, l_ref, beta=100.0)
    # -100/2 * ((0.10 - 0.12) - (0.30 - 0.25)) = -50 * (-0.07) = 3.5
    torch.testing.assert_close(logit, torch.tensor([3.5]))
    torch.testing.assert_close(diffusion_dpo_logit(l, l_ref, w, w_ref, beta=100.0), -logit)
    torch.testing.assert_close(diffusion_dpo_loss(logit), torch.log1p(torch.exp(-logit)))
    assert implicit_accuracy(torch.tensor([3.5, -1.0, 0.0, 2.0])).item() == 0.625
    torch.testing.assert_close(diffusion_dpo_loss(logit, torch.tensor([2.0])),
                               2 * diffusion_dpo_loss(logit))
