"""SFT and Diffusion-DPO on the training loop (vader/algorithms/sft.py, dpo.py): what a step
computes, checked against the formulas, the builds they refuse, and exact resume."""
from __future__ import annotations

import math

import pytest
import torch

from tests.test_training import check_resume_matches_uninterrupted
from tests.video_data import write_clip_folder, write_pairs
from vader.algorithms.losses import min_snr_weight


@pytest.fixture
def clips(tmp_path):
    return write_clip_folder(tmp_path / "clips", ["red", "green", "blue", "yellow"])


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs", ["red", "green", "blue", "yellow"])


def sft_args(folder):
    return ["algorithm=sft", "dataset=folder", f"dataset.path={folder}", "data.num_workers=0"]


def dpo_args(table):
    return ["algorithm=dpo", "dataset=pairs", f"dataset.path={table}", "data.num_workers=0"]


def test_dpo_at_the_lora_zero_init_is_log_2_with_accuracy_one_half(make_trainer, pairs):
    trainer = make_trainer(*dpo_args(pairs), "train_batch_size=4")
    trainer.setup()
    plan = trainer.algorithm.plan(0)
    result = trainer.algorithm.loss(plan.updates[0][0])
    # Exactly: the model and its reference give bitwise the same errors, so the logit is 0.
    assert result.numbers["loss"].item() == torch.tensor(math.log(2)).item()  # in float32
    assert result.numbers["implicit_acc"].item() == 0.5  # every pair a tie, counted half
    assert result.numbers["rewards/margins"].item() == 0.0


def test_dpo_noises_chosen_and_rejected_alike_and_swapping_them_negates_the_logit(
        make_trainer, pairs, monkeypatch):
    from vader.algorithms.losses import diffusion_dpo_logit

    trainer = make_trainer(*dpo_args(pairs), "train_batch_size=4")
    trainer.setup()
    with torch.no_grad():  # a LoRA away from its init, so the logits are not all 0
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    samples = trainer.algorithm.plan(0).updates[0][0][0]
    seen = []
    real = trainer.backbone.add_noise
    monkeypatch.setattr(trainer.backbone, "add_noise",
                        lambda x, n, t: seen.append((n.clone(), t.clone())) or real(x, n, t))
    e = trainer.algorithm.errors(samples)
    assert len(seen) == 2  # the model's pass and the reference's
    for noise, t in seen:
        half = len(samples)
        assert torch.equal(noise[:half], noise[half:]) and torch.equal(t[:half], t[half:])
        assert len(set(t[:half].tolist())) > 1  # one timestep per pair, not one per batch
    logit = diffusion_dpo_logit(e["chosen"], e["chosen_ref"], e["rejected"], e["rejected_ref"])
    assert logit.abs().min() > 0
    for s in samples:
        s.videos.reverse()
    swapped = trainer.algorithm.errors(samples)
    torch.testing.assert_close(
        diffusion_dpo_logit(swapped["chosen"], swapped["chosen_ref"], swapped["rejected"],
                            swapped["rejected_ref"]), -logit, rtol=1e-5, atol=1e-4)


def test_min_snr_weights_follow_the_formula():
    alphas = torch.tensor([0.99, 0.5, 0.01])
    snr = alphas / (1 - alphas)  # 99, 1, 0.0101
    torch.testing.assert_close(min_snr_weight(alphas, 5.0), torch.stack(
        [5 / snr[0], torch.tensor(1.0), torch.tensor(1.0)]))
    torch.testing.assert_close(min_snr_weight(alphas, 5.0, "v_prediction"),
                               torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def test_sft_draws_timesteps_and_caption_dropout_per_sample(make_trainer, clips, monkeypatch):
    trainer = make_trainer(*sft_args(clips), "train_batch_size=4", "algorithm.caption_dropout=0.5")
    trainer.setup()
    embedded = []
    real = trainer.algorithm.stream.embed
    monkeypatch.setattr(trainer.algorithm.stream, "embed",
                        lambda texts: embedded.append(list(texts)) or real(texts))
    for step in range(4):
        for item in trainer.algorithm.plan(step).updates[0]:
            trainer.algorithm.loss(item)
    texts = [t for batch in embedded for t in batch]
    assert 0 < texts.count("") < len(texts)  # some captions dropped, not all
    assert all(t == "" or t.endswith("square moves right") for t in texts)


def test_the_algorithms_refuse_a_missing_or_wrong_dataset(make_trainer, clips, pairs):
    with pytest.raises(ValueError, match="SFT learns from clips: choose a dataset, e.g. dataset=folder"):
        make_trainer("algorithm=sft")
    with pytest.raises(ValueError, match="DPO learns from pairs, but .*folder lists clips; use "
                                         "dataset=pairs, videodpo or pickapic"):
        make_trainer("algorithm=dpo", "dataset=folder", f"dataset.path={clips}")
    with pytest.raises(ValueError, match="RewardGradient learns from its own samples and reads none"):
        make_trainer("dataset=folder", f"dataset.path={clips}")
    with pytest.raises(ValueError, match=r"data.window must be one of \('random', 'central'\)"):
        make_trainer(*sft_args(clips), "data.window=middle")


def test_online_dpo_pairs_each_group_s_best_and_worst(make_trainer):
    trainer = make_trainer("algorithm=dpo", "algorithm.pairs=online", "algorithm.group_size=3",
                           "algorithm.groups_per_step=2", "reward_fn=brightness")
    trainer.setup()
    algo = trainer.algorithm
    groups = []
    real = algo._sample_group
    algo._sample_group = lambda prompt, seeds: groups.append(real(prompt, seeds)) or groups[-1]
    pairs, numbers = algo.online_pairs(0)
    assert len(pairs) == 2
    for pair, (latents, values) in zip(pairs, groups):
        assert torch.equal(pair.videos[0], latents[values.argmax()])
        assert torch.equal(pair.videos[1], latents[values.argmin()])
    assert numbers["reward"] == pytest.approx(torch.cat([v for _, v in groups]).mean().item())


@pytest.mark.parametrize("which", ["sft", "dpo", "online"])
def test_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch, clips, pairs, which):
    args = {"sft": sft_args(clips), "dpo": dpo_args(pairs),
            "online": ["algorithm=dpo", "algorithm.pairs=online", "algorithm.groups_per_step=1"]}
    check_resume_matches_uninterrupted(make_trainer, tmp_path, monkeypatch, *args[which],
                                       "num_steps=4", "checkpoint_every=2", "train_batch_size=2",
                                       "gradient_accumulation_steps=2")


def test_online_dpo_same_noise_starts_a_group_from_one_noise(make_trainer, monkeypatch):
    with pytest.raises(ValueError, match="algorithm.same_noise=true with eta=0.0"):
        make_trainer("algorithm=dpo", "algorithm.pairs=online", "algorithm.same_noise=true")
    trainer = make_trainer("algorithm=dpo", "algorithm.pairs=online", "algorithm.same_noise=true",
                           "eta=1.0", "algorithm.group_size=3", "algorithm.groups_per_step=1",
                           "train_batch_size=3")
    trainer.setup()
    import vader.algorithms.dpo as dpo
    drawn = []
    real = dpo.make_noise
    monkeypatch.setattr(dpo, "make_noise", lambda shape, seeds, device: drawn.append(list(seeds))
                        or real(shape, seeds, device))
    pairs, _ = trainer.algorithm.online_pairs(0)
    assert len(drawn) == 1 and len(set(drawn[0])) == 1  # one noise for the group's 3 videos
    assert not torch.equal(pairs[0].videos[0], pairs[0].videos[1])  # the steps' noise differs
