"""GRPO and the stochastic sampler: the DDIM step as a Gaussian, on-policy ratios, advantages, the
clipped objective, which steps are trained, and the errors for settings it cannot run."""
from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from backbones.tiny import tiny
from vader.algorithms.losses import approx_kl, group_advantages, ppo_clip_loss
from vader.evaluation.evaluate import lora_disabled
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.stochastic import DDIMStep, log_prob, rollout

GRPO = ["algorithm=grpo", "algorithm.group_size=4", "algorithm.groups_per_step=1",
        "train_batch_size=2"]


def scheduler(steps: int = 10, **config):
    s = tiny().make_scheduler()
    if config:
        s = type(s).from_config({**s.config, **config})
    s.set_timesteps(steps)
    return s


# --- 1. the DDIM-eta step as a Gaussian --------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_gaussian_is_the_scheduler_step_and_its_log_prob_is_normal(prediction_type):
    s = scheduler(prediction_type=prediction_type)
    eta = 0.7
    kernel = DDIMStep(s, eta)
    g = torch.Generator().manual_seed(0)
    x, out, noise = (torch.randn(3, 4, 2, 4, 4, generator=g) for _ in range(3))
    for t in s.timesteps:
        mean, std = kernel.gaussian(out, t.expand(3), x)
        drawn = mean + std * noise
        expected = s.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(drawn, expected, rtol=0, atol=1e-6)
        prev = int(t) - s.config.num_train_timesteps // s.num_inference_steps
        variance = s._get_variance(t, torch.tensor(prev))
        torch.testing.assert_close(std.flatten(), (eta * variance ** 0.5).expand(3))
        reference = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(drawn)
        torch.testing.assert_close(log_prob(drawn, mean, std), reference.flatten(1).mean(1))


def test_ddim_gaussian_takes_a_timestep_per_video():
    s = scheduler()
    kernel = DDIMStep(s, 1.0)
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 4, 2, 4, 4, generator=g), torch.randn(2, 4, 2, 4, 4, generator=g)
    t = s.timesteps[[1, 6]]
    mean, std = kernel.gaussian(out, t, x)
    for b in range(2):
        one_mean, one_std = kernel.gaussian(out[b:b + 1], t[b:b + 1], x[b:b + 1])
        assert torch.equal(mean[b:b + 1], one_mean) and torch.equal(std[b:b + 1], one_std)


def test_deterministic_or_unsupported_steps_are_refused():
    with pytest.raises(ValueError, match="eta"):
        DDIMStep(scheduler(), 0.0)
    from diffusers import EulerDiscreteScheduler
    euler = EulerDiscreteScheduler.from_config(scheduler().config)
    euler.set_timesteps(4)
    with pytest.raises(ValueError, match="backbone.scheduler=ddim"):
        DDIMStep(euler, 1.0)


def test_rollout_draws_the_video_the_differentiable_sampler_draws():
    backbone = tiny()
    model = backbone.trainable_module()
    prompts, seeds = ["a red car", "a dog"], [11, 12]
    noise = make_noise(backbone.latent_shape(2, 4, 16, 16), seeds)
    with torch.no_grad():
        expected = sample(backbone, model, prompts, noise, num_inference_steps=4,
                          guidance_scale=7.5, eta=0.5, step_seeds=seeds)
    traj = rollout(backbone, model, prompts, noise, num_inference_steps=4, guidance_scale=7.5,
                   eta=0.5, step_seeds=seeds)
    torch.testing.assert_close(traj.final, expected, rtol=0, atol=1e-6)
    assert traj.latents.shape == (5, *noise.shape) and traj.log_probs.shape == (4, 2)
    assert traj.means.shape == (4, *noise.shape) and traj.stds.shape == (4, 2)
    for i in range(4):  # each recorded log-probability is that of the recorded sample
        torch.testing.assert_close(traj.log_probs[i], log_prob(
            traj.latents[i + 1], traj.means[i], traj.stds[i].view(2, 1, 1, 1, 1)))


# --- 2 and 4. on-policy re-evaluation, the KL to the reference -----------------------------
def lora_layers(module):
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def test_on_policy_ratio_is_one_and_kl_zero_at_zero_init(make_trainer):
    trainer = make_trainer(*GRPO, "num_inference_steps=6", "algorithm.timestep_fraction=1.0",
                           "algorithm.beta=0.1")
    assert trainer.cfg.guidance_scale > 1  # guidance on, in the rollout and the update
    trainer.setup()
    algo = trainer.algorithm
    plan = algo.plan(0)
    items = plan.updates[0]
    assert len(items) == 2 * 5  # 2 micro-batches of 2 videos x 5 trained steps (6 less the final)
    for item in items:
        numbers = algo.loss(item).numbers
        assert abs(numbers["ratio"].item() - 1) < 1e-6
        assert numbers["approx_kl"].item() < 1e-12 and numbers["clip_frac"].item() == 0
        assert numbers["kl"].item() == 0  # the LoRA's up-projection is still zero
    assert all(not layer.disable_adapters for layer in lora_layers(trainer.model))


def test_kl_is_zero_with_the_lora_off_and_positive_with_it_on(make_trainer):
    trainer = make_trainer(*GRPO, "algorithm.beta=0.1")
    trainer.setup()
    with torch.no_grad():
        for name, p in trainer.backbone.trainable_module().named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    algo = trainer.algorithm
    item = algo.plan(0).updates[0][0]
    numbers = algo.loss(item).numbers
    assert numbers["kl"].item() > 0
    # On-policy the ratio is 1, so the logged policy loss is -mean(A), without the KL term.
    expected = -algo.advantages[torch.tensor(item[0])].mean()
    torch.testing.assert_close(numbers["policy_loss"], expected, rtol=0, atol=1e-5)
    with lora_disabled(trainer.model):
        assert algo.loss(item).numbers["kl"].item() == 0
    # the reference pass switched the LoRA off and on again: still on
    assert all(not layer.disable_adapters for layer in lora_layers(trainer.model))


# --- 3. advantages ----------------------------------------------------------------------------
def test_group_advantages_are_standardised_per_group():
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0)) * 3 + 1
    adv, kept = group_advantages(rewards, 4)
    groups = adv.view(3, 4)
    torch.testing.assert_close(groups.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(groups.std(1, correction=0), torch.ones(3), atol=1e-3, rtol=0)
    assert kept.all()


def test_a_group_of_equal_rewards_is_dropped():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.5, 0.5, 0.5, 0.5])
    adv, kept = group_advantages(rewards, 4)
    assert kept.tolist() == [True] * 4 + [False] * 4
    assert torch.equal(adv[4:], torch.zeros(4)) and adv[:4].abs().sum() > 0


def test_global_std_and_clipping():
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0])
    adv, _ = group_advantages(rewards, 4, global_std=True, eps=0.0)
    centred = rewards.view(2, 4) - rewards.view(2, 4).mean(1, keepdim=True)
    torch.testing.assert_close(adv, (centred / rewards.std(correction=0)).flatten())
    outlier = torch.zeros(64)
    outlier[0] = 1.0  # (1 - 1/64) / std = sqrt(63) ~ 7.9 before clipping
    adv, _ = group_advantages(outlier, 64, clip=5.0)
    assert adv[0].item() == 5.0 and adv[1:].max() < 0


# --- 4. the clipped objective -------------------------------------------------------------
def test_ppo_objective_at_ratio_one_has_the_policy_gradient():
    g = torch.Generator().manual_seed(0)
    advantages, logp = torch.randn(6, generator=g), torch.randn(6, generator=g).requires_grad_()
    ratio = torch.exp(logp - logp.detach())
    (grad,) = torch.autograd.grad(ppo_clip_loss(advantages, ratio, 1e-4).mean(), logp)
    (expected,) = torch.autograd.grad(-(advantages * logp).mean(), logp)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("advantage,ratio,flat", [(1.0, 1.5, True), (-1.0, 0.5, True),
                                                   (1.0, 0.5, False), (-1.0, 1.5, False)])
def test_ppo_objective_is_flat_where_the_clip_binds(advantage, ratio, flat):
    r = torch.tensor([ratio], requires_grad=True)
    (grad,) = torch.autograd.grad(ppo_clip_loss(torch.tensor([advantage]), r, 0.2).sum(), r)
    assert (grad.item() == 0) == flat


def test_approx_kl():
    assert approx_kl(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)


# --- 5. which steps are re-evaluated -----------------------------------------------------------
@pytest.mark.parametrize("exclude", [True, False])
def test_each_video_trains_the_configured_fraction_of_its_steps(make_trainer, monkeypatch, exclude):
    trainer = make_trainer(*GRPO, "num_inference_steps=9", "algorithm.timestep_fraction=0.5",
                           f"algorithm.exclude_final_step={exclude}", "algorithm.beta=0")
    trainer.setup()
    algo = trainer.algorithm
    calls = []
    predict = trainer.backbone.predict
    monkeypatch.setattr(trainer.backbone, "predict", lambda net, x, t, c: (
        calls.append((torch.is_grad_enabled(), x.shape[0])), predict(net, x, t, c))[1])
    trained = {}
    for step in range(3):
        for index, steps, _ in algo.plan(step).updates[0]:
            for v, s in zip(index, steps):
                trained.setdefault((step, v), []).append(s)
    eligible = 8 if exclude else 9
    assert len(trained) == 3 * 4
    for steps in trained.values():
        assert len(steps) == len(set(steps)) == int(0.5 * eligible)
        assert max(steps) < 9 and (8 not in steps if exclude else True)
    if not exclude:  # over 12 videos the final step is drawn at least once
        assert any(8 in steps for steps in trained.values())
    calls.clear()
    for item in algo.plan(0).updates[0]:
        algo.loss(item)
    with_grad = [n for grad, n in calls if grad]
    assert sum(with_grad) == 2 * 4 * int(0.5 * eligible)  # guidance doubles each call's batch


# --- 9. clear errors ------------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [
    ("algorithm.group_size=1", "algorithm.group_size"),
    ("algorithm.eta=0", "algorithm.eta"),
    ("algorithm.timestep_fraction=0", "algorithm.timestep_fraction"),
    ("algorithm.timestep_fraction=1.5", "algorithm.timestep_fraction"),
    ("gradient_accumulation_steps=2", "gradient_accumulation_steps"),
    ("num_inference_steps=1", "algorithm.exclude_final_step=false"),
])
def test_bad_settings_name_the_key(make_trainer, override, key):
    with pytest.raises(ValueError, match=key):
        make_trainer("algorithm=grpo", override)


def test_a_misspelt_key_fails_while_composing(make_trainer):
    from hydra.errors import ConfigCompositionException
    with pytest.raises(ConfigCompositionException, match="algorithm.gruop_size"):
        make_trainer("algorithm=grpo", "algorithm.gruop_size=4")


def test_a_batch_that_cannot_hold_whole_groups_across_processes(make_trainer):
    from vader.algorithms.grpo import GRPO as Algorithm
    trainer = make_trainer("algorithm=grpo", "algorithm.group_size=3", "algorithm.groups_per_step=1")
    with pytest.raises(ValueError, match="3 videos per step cannot be shared evenly by 2 processes"):
        Algorithm(group_size=3, groups_per_step=1).check(trainer.cfg, 2)


def test_reward_gradients_refuse_a_reward_without_gradients_and_grpo_takes_it(make_trainer):
    with pytest.raises(ValueError, match="algorithm=grpo"):
        make_trainer("reward_fn=compressibility")
    make_trainer("algorithm=grpo", "reward_fn=compressibility")


def test_grpo_trains_and_logs(make_trainer, tmp_path):
    import json
    trainer = make_trainer(*GRPO, "reward_fn=compressibility")
    trainer.setup()
    before = trainer.backbone.lora_state_dict()
    result = trainer.train()
    after = trainer.backbone.lora_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    for key in ("reward", "reward_std", "advantage_abs", "ratio", "approx_kl", "clip_frac", "kl",
                "dropped_groups", "rollout_seconds", "update_seconds", "grad_norm"):
        assert all(isinstance(r[key], (int, float)) for r in train), key
    assert "reward/compressibility" in result["summary"]["per_model"]["tuned"]


def test_an_update_makes_videos_with_positive_advantage_more_likely(make_trainer):
    """One update, then the same recorded steps re-evaluated: the log-probabilities moved with
    the advantages (measured correlation 0.96 on colorfulness at lr 1e-3)."""
    trainer = make_trainer(*GRPO[:2], "train_batch_size=4", "algorithm.groups_per_step=2",
                           "num_inference_steps=6", "algorithm.timestep_fraction=1.0", "lr=1e-3")
    trainer.setup()
    algo = trainer.algorithm
    items = algo.plan(0).updates[0]
    for item in items:
        trainer.accelerator.backward(algo.loss(item).loss)
    trainer.optimizer.step()
    moved = torch.zeros(8)
    with torch.no_grad():
        for index, steps, _ in items:
            for v, s in zip(index, steps):
                moved[v] += torch.log(algo.loss(([v], [s], 0.0)).numbers["ratio"])
    advantages = algo.advantages
    assert torch.corrcoef(torch.stack([advantages, moved]))[0, 1] > 0.8, (advantages, moved)


@pytest.mark.parametrize("same", [True, False])
def test_same_noise_shares_a_groups_initial_noise_and_not_its_steps(make_trainer, same):
    trainer = make_trainer(*GRPO[:2], "algorithm.groups_per_step=2", "train_batch_size=2",
                           f"algorithm.same_noise={same}")
    trainer.setup()
    algo = trainer.algorithm
    algo.plan(0)
    start, final = algo.traj.latents[0], algo.traj.final
    for group in (range(0, 4), range(4, 8)):
        first = group[0]
        for v in group[1:]:
            assert torch.equal(start[v], start[first]) == same
            assert not torch.equal(final[v], final[first])  # the steps' noise differs
    assert not torch.equal(start[0], start[4])  # groups never share noise

