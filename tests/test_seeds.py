"""Training, evaluation and eta noise never share a generator seed, so training never draws the
noise it is evaluated on, and no video's eta noise is another video's initial noise."""
from __future__ import annotations

import torch

from vader.sampling import seeds as seeds_module
from vader.sampling.seeds import generator_seed


class Recorder:
    """Every seed given to `torch.Generator.manual_seed` while it is installed as torch.Generator:
    the seeds the library really draws noise from, whichever function draws it."""

    def __init__(self, monkeypatch):
        self.seen: list[int] = []
        seen = self.seen

        class Generator(torch.Generator):
            def manual_seed(self, seed):
                seen.append(int(seed))
                return super().manual_seed(seed)

        monkeypatch.setattr(torch, "Generator", Generator)

    def take(self) -> list[int]:
        taken = list(self.seen)
        self.seen.clear()
        return taken


def test_noise_seed_sets_are_disjoint(make_trainer, monkeypatch, tmp_path):
    # eta > 0 draws fresh noise at every denoising step; val_seed=0 starts evaluation seeds where
    # training videos start.
    trainer = make_trainer("eta=0.5", "train_batch_size=2", "num_val_seeds=2", "val_seed=0")
    trainer.setup()
    recorder = Recorder(monkeypatch)
    trainer.train_step()
    train_step = recorder.take()  # 2 videos' initial noise, then 2 x 3 steps of eta noise
    trainer.evaluate(tmp_path / "eval", models=("tuned",), gallery=False)
    evaluation = recorder.take()
    steps, videos = trainer.cfg.num_inference_steps, 2
    assert len(train_step) == videos * (1 + steps)
    # No seed is drawn twice in a training step; evaluation gives every prompt the same noise
    # per evaluation seed (2 seeds), and none of it is training noise.
    assert len(set(train_step)) == len(train_step)
    assert len(set(evaluation)) == 2 * (1 + steps) and not set(evaluation) & set(train_step)
    # Far into training (videos 0..2999, past val_seed + 1000 and 1000 x a video number), the
    # initial noise still differs from every evaluation and eta seed above.
    future = {s for step in range(1500) for s in trainer.algorithm.batch(step, 0)[1]}
    eta = set(train_step[videos:]) | set(evaluation)
    assert not future & eta


def test_generator_seed_is_stable_and_distinct():
    # A pure function of its arguments: the same value in every process and Python run.
    assert generator_seed("train", 0, 0) == generator_seed("train", 0, 0)
    assert 0 <= generator_seed("eta", 2**62, 10**6) < 2**63
    keys = [(p, s, i) for p in (seeds_module.TRAIN, seeds_module.EVAL, seeds_module.ETA)
            for s in range(30) for i in range(30)]
    assert len({generator_seed(*k) for k in keys}) == len(keys)
    torch.Generator().manual_seed(generator_seed("train", 0, 1))  # accepted as a seed
