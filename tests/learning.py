"""Learning tests that do not hang on one seed.

A test that claims "training raised the held-out reward" runs its setting with several seeds and
asserts a majority of them improved *and* a margin on the mean gain (`assert_learns`). Each
setting below was measured over more seeds (and package versions) than the tests run:

    python -m benchmarks.learning_margins --seeds 0 1 2 3 4 5

prints every seed's held-out reward before and after; the numbers sit beside each test. The
settings live here, not in the test files, so the benchmark measures exactly what the tests run.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rewards.brightness import Brightness

SEEDS = (0, 1, 2)  # what the tests run; a majority is 2 of them

# Held-out pairs per run: the builtin prompts' 4 held-out prompts x 4 seeds. One seed per prompt
# (4 pairs) made a run's before/after a coin toss for the weakest rewards.
EVAL = ["num_val_seeds=4"]

# Training and held-out prompts share their subject ("a red car" doing different things): a
# random tiny text encoder maps unrelated prompts to unrelated embeddings, so text-video
# alignment learnt on some prompts need not carry over to unrelated ones (measured: held-out
# clip_score fell for 2 of 3 seeds with the builtin prompts, rose for all 3 with these).
SHARED_SUBJECT = ["prompt_fn=nouns_activities", "prompt_fn.nouns=[a red car]"]


def _clip(folders: dict[str, Path], name: str) -> list[str]:
    keys = {"aesthetic": {"pretrained": folders["clip"], "head_repo": folders["clip"],
                          "head_file": "head.pth"},
            "clip_score": {"pretrained": folders["clip"]},
            "pickscore": {"pretrained": folders["bare"], "processor": folders["processor"]}}[name]
    return [f"reward_fn={name}", *(f"reward_fn.{k}={v}" for k, v in keys.items())]


# name -> (reward overrides from the tiny model folders, training settings).
SETTINGS: dict[str, tuple[Callable[[dict[str, Path]], list[str]], list[str]]] = {
    # lr 2e-2 over 8 steps: at 5e-2 PickScore overshot on one seed of four.
    **{name: (lambda f, n=name: _clip(f, n), ["num_steps=8", "lr=2e-2", *SHARED_SUBJECT])
       for name in ("aesthetic", "clip_score", "pickscore")},
    "hps": (lambda f: ["reward_fn=hps", f"reward_fn.pretrained={f['hps']}",
                       f"reward_fn.model_name={f['hps_arch']}"], ["num_steps=4", "lr=5e-2"]),
    # Measured only, not asserted (tests/test_rewards_video.py says why): on the random tiny
    # X-CLIP held-out gains are at the noise level. Seeds 0-5, one thread, torch 2.14.1: 1/6
    # seeds improved at 8 steps, 5/6 at 16, 6/6 at 24; the 24-step setting then lost on seed 2
    # with two threads and with torch 2.15.0 (mean over seeds 0-2: -0.0007).
    "xclip": (lambda f: ["reward_fn=xclip", f"reward_fn.pretrained={f['xclip']}"],
              ["num_steps=24", "lr=5e-2"]),
    "actpred": (lambda f: ["reward_fn=actpred", f"reward_fn.pretrained={f['actpred']}",
                           "reward_fn.action=dancing ballet"], ["num_steps=8", "lr=5e-2"]),
    # With the builtin prompts object detection rose for only 2 of 4 seeds (measured); with a
    # shared subject for all 4.
    "object": (lambda f: ["reward_fn=object", f"reward_fn.pretrained={f['object']}",
                          "reward_fn.object=dog"], ["num_steps=8", "lr=5e-2", *SHARED_SUBJECT]),
    # GRPO on a reward computed without gradients (BrightnessWithoutGradient, below): 4 groups of
    # 4 videos a step sharing their initial noise, all 3 trainable steps of 4. lr 3e-3: at 1e-2
    # the reward fell (GRPO's gradient is noisy; Adam takes full-size steps along the noise).
    "grpo_no_gradient": (
        lambda f: ["algorithm=grpo", "reward_fn=brightness",
                   "reward_fn._target_=tests.learning.BrightnessWithoutGradient"],
        ["num_inference_steps=4", "algorithm.timestep_fraction=1.0", "algorithm.groups_per_step=4",
         "algorithm.same_noise=true", "train_batch_size=8", "num_steps=15", "lr=3e-3"]),
    # GRPO on the tiny Wan (tests/tiny_wan.py): flow matching, Flow-GRPO's SDE step at eta 0.7
    # (its default noise level), 5 frames (2 latent frames) of 16x16. Colorfulness, not brightness:
    # the random Wan VAE's output norm fixes each video's mean brightness (its std over random
    # latents is 1e-4), while colorfulness varies (mean 0.0784, std 0.0010 over 64 random latents).
    "grpo_wan": (
        lambda f: ["algorithm=grpo", "reward_fn=colorfulness", "backbone=wan",
                   f"backbone.pretrained={f['wan']}", "backbone.transformer_dtype=fp32",
                   "backbone.text_encoder_dtype=fp32", "backbone.max_sequence_length=16"],
        ["num_frames=5", "num_inference_steps=4", "algorithm.eta=0.7", "algorithm.timestep_fraction=1.0",
         "algorithm.groups_per_step=4", "algorithm.same_noise=true", "train_batch_size=8",
         "num_steps=30", "lr=3e-2"]),
    # The same, at 30 steps, on the shipped reward without gradients, JPEG compressibility:
    # measured, not asserted (on 16x16 frames of the random tiny model its spread is a few bytes).
    "grpo_compressibility": (
        lambda f: ["algorithm=grpo", "reward_fn=compressibility"],
        ["num_inference_steps=4", "algorithm.timestep_fraction=1.0", "algorithm.groups_per_step=4",
         "algorithm.same_noise=true", "train_batch_size=8", "num_steps=30", "lr=3e-3"]),
    # SFT on captioned clips the tests write (coloured squares sliding right, tests/video_data.py);
    # measured on held-out clips of the same colours at another speed (held_out_denoising).
    "sft_heldout_loss": (
        lambda f: ["algorithm=sft", "dataset=folder", f"dataset.path={f['clips']}",
                   "reward_fn=colorfulness", "data.num_workers=0"],
        ["num_steps=30", "lr=1e-2", "train_batch_size=4"]),
    # SFT of the tiny SVD on (image, video) rows the tests write (tests/video_data.py
    # write_image_video: own first-frame images on half the rows, the clip's first frame on the
    # others, and three bad rows skipped); measured on held-out rows of the same colours at another
    # speed (held_out_denoising, at EDM noise levels).
    "sft_svd_heldout_loss": (
        lambda f: ["backbone=svd", f"backbone.pretrained={f['svd']}", "backbone.unet_dtype=fp32",
                   "backbone.image_encoder_dtype=fp32", "prompt_fn=images", f"prompt_fn.path={f['frames']}",
                   "prompt_fn.val_fraction=0.34", "algorithm=sft", "dataset=image_video",
                   f"dataset.path={f['image_video']}", "reward_fn=colorfulness", "data.num_workers=0"],
        ["num_steps=30", "lr=1e-2", "train_batch_size=4", "guidance_scale=3"]),
    # Offline DPO on pairs whose chosen video has a bright background and the rejected one a dark
    # one; measured on held-out pairs of other colours (held_out_accuracy).
    "dpo_heldout_accuracy": (
        lambda f: ["algorithm=dpo", "dataset=pairs", f"dataset.path={f['pairs']}",
                   "reward_fn=colorfulness", "data.num_workers=0"],
        ["num_steps=30", "lr=1e-2", "train_batch_size=4"]),
    # Online DPO: each group's brightest and darkest own sample form the pair. Measured only, not
    # asserted: on the random tiny backbone it lowered held-out brightness in nearly every run
    # (python -m benchmarks.learning_margins --settings dpo_online --seeds 0 1 2 [--override]):
    #   as below (20 steps, 2 groups of 4, lr 1e-2):          +0.0038 -0.0095 -0.0059
    #   lr 1e-3 / 3e-3, 30 steps, 4 groups of 4:              -0.0019 +0.0005 -0.0002 / -0.0045 -0.0092 -0.0044
    #   groups of 8, eta 1, lr 1e-2, 20 steps (seeds 0, 1):    -0.0229 -0.0179; guidance 1: +0.0309 -0.0202
    #   the same with same_noise:                              -0.0061 -0.0147
    #   same_noise, eta 1, beta 500, lr 3e-3, 60 steps:        -0.0070 -0.0329 -0.0545
    # Our reading, not proven: DPO lowers the chosen video's denoising error on forward-noised
    # latents, and a random-weight denoiser's sampling path need not follow that process, so the
    # objective is met (implicit accuracy rises) while samples move elsewhere. To be judged on
    # issue 16's pretrained tiny model.
    "dpo_online": (
        lambda f: ["algorithm=dpo", "algorithm.pairs=online", "reward_fn=brightness"],
        ["num_steps=20", "lr=1e-2", "algorithm.group_size=4", "algorithm.groups_per_step=2",
         "train_batch_size=4"]),
}


def held_out_denoising(trainer, folders: dict[str, Path], draws: int = 8) -> tuple[float, float]:
    """Minus the mean denoising error on the held-out clips (each at `draws` fixed noise levels
    and noises), base (LoRA off) and tuned: higher is better, so a gain is a lower loss. An
    image-to-video backbone is measured on the held-out image-video rows, each conditioned on its
    image, at `draws` noise levels from its own training distribution (fixed draws)."""
    from vader.algorithms.denoising import denoising_errors, draws as timestep_draws, timestep_draw
    from vader.data.clips import read_clip
    from vader.data.loader import LoaderSettings, VideoItems
    from vader.data.manifests import folder, image_video
    from vader.data.stream import TrainingData, frame_rule
    from vader.evaluation.evaluate import lora_disabled

    cfg, backbone, model = trainer.cfg, trainer.backbone, trainer.accelerator.unwrap_model(trainer.model)
    rule = frame_rule(cfg)
    central = dataclasses.replace(rule, window="central")
    if getattr(backbone, "conditioning", "text") == "image":
        items = VideoItems(image_video(folders["heldout_image_video"]), LoaderSettings(central, 0, images=True))
        samples = [items[(10**9 + i, i)] for i in range(len(items))]  # positions no training sample has
        frames = torch.stack([s.videos[0] for s in samples])
        cond = torch.cat([backbone.encode_prompts([TrainingData.prompt(s)]) for s in samples])
        t = timestep_draws(range(10**9, 10**9 + draws), 12345, timestep_draw(backbone))[0].repeat(len(samples))
    else:
        clips = folder(folders["heldout_clips"])
        frames = torch.stack([read_clip(c.video, central) for c in clips])
        cond = torch.cat([backbone.encode_prompts([c.caption]) for c in clips])
        t = torch.linspace(50, 950, draws).long().repeat(len(clips))
    latents = backbone.encode((frames + 1) / 2).repeat_interleave(draws, 0)
    cond = cond.repeat_interleave(draws, 0)
    g = torch.Generator().manual_seed(12345)
    noise = torch.randn(latents.shape, generator=g)
    with torch.no_grad():
        tuned = denoising_errors(backbone, model, latents, noise, t, cond).mean().item()
        with lora_disabled(model):
            base = denoising_errors(backbone, model, latents, noise, t, cond).mean().item()
    return -base, -tuned


def held_out_accuracy(trainer, folders: dict[str, Path], draws: int = 8) -> tuple[float, float]:
    """Implicit accuracy on the held-out pairs, each at `draws` stream positions (noise and
    timestep) no training sample used: base (exactly 0.5: every pair a tie) and tuned."""
    from vader.algorithms.losses import diffusion_dpo_logit, implicit_accuracy
    from vader.data.loader import LoaderSettings, VideoItems
    from vader.data.manifests import pairs
    from vader.data.stream import frame_rule

    algo = trainer.algorithm
    items = VideoItems(pairs(folders["heldout_pairs"]),
                       LoaderSettings(frame_rule(trainer.cfg), seed=0, fixed_windows=True))
    samples = [items[(10**9 + d * 1000 + i, i)] for i in range(len(items.items)) for d in range(draws)]
    algo.stream._encode(samples)
    with torch.no_grad():
        e = algo.errors(samples)
    logit = diffusion_dpo_logit(e["chosen"], e["chosen_ref"], e["rejected"], e["rejected_ref"],
                                algo.beta)
    return 0.5, implicit_accuracy(logit).item()


# Settings whose outcome is not the held-out reward: name -> (trainer, folders) -> (before, after).
MEASURES = {"sft_heldout_loss": held_out_denoising, "sft_svd_heldout_loss": held_out_denoising,
            "dpo_heldout_accuracy": held_out_accuracy}


def write_datasets(root: Path) -> dict[str, Path]:
    """The captioned clips and preference pairs of the data settings, and their held-out parts."""
    from tests.video_data import write_clip_folder, write_image_video, write_pairs

    train, held_out = ["red", "green", "blue", "yellow"], ["cyan", "magenta", "orange", "white"]
    return {"clips": write_clip_folder(root / "clips", train, steps=(1, 3)),
            "heldout_clips": write_clip_folder(root / "heldout_clips", train, steps=(2,)),
            "pairs": write_pairs(root / "pairs", train),
            "heldout_pairs": write_pairs(root / "heldout_pairs", held_out),
            "image_video": write_image_video(root / "image_video", train, steps=(1, 3)),
            "heldout_image_video": write_image_video(root / "heldout_image_video", train, bad=False)}


def reward_folders(root: Path, names: tuple[str, ...] = tuple(SETTINGS)) -> dict[str, Path]:
    """The tiny random reward models the settings in `names` need, in their published layouts,
    and the datasets of the data settings (SFT, offline DPO)."""
    from tests import tiny_clip, tiny_video_models as tvm

    folders: dict[str, Path] = {}
    if set(MEASURES) & set(names):
        folders.update(write_datasets(root / "data"))
    if {"aesthetic", "clip_score", "pickscore"} & set(names):
        folders.update(tiny_clip.reward_folders(root / "clip"))
    if "hps" in names:
        from tests import tiny_open_clip
        arch = tiny_open_clip.write_arch(root / "hps" / "tiny_clip")
        model, _ = tiny_open_clip.tiny_clip(arch, seed=0)
        folders.update(hps=tiny_open_clip.write_hps(root / "hps" / "HPSv2", model), hps_arch=arch)
    if "sft_svd_heldout_loss" in names:
        from tests.tiny_svd import write_first_frames, write_svd
        folders.update(svd=write_svd(root / "svd"),
                       frames=write_first_frames(root / "frames", ["red", "green", "blue"]))
    if "grpo_wan" in names:
        from tests.tiny_wan import write_wan
        folders["wan"] = write_wan(root / "wan")
    writers = {"xclip": tvm.write_xclip, "actpred": tvm.write_videomae, "object": tvm.write_yolos}
    for name in set(writers) & set(names):
        folders[name] = writers[name](root / name)
    return folders


class BrightnessWithoutGradient(Brightness):
    """Mean brightness as a reward without gradients: computed under no_grad on detached frames
    and declared `differentiable = False`, so only an algorithm that needs no reward gradient
    (GRPO) can train on it; reward-gradient training refuses it."""

    differentiable = False

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, prompts: list[str]):
        values, info = super().__call__(frames.detach(), prompts)
        return values.detach(), info


@dataclass(frozen=True)
class Outcome:
    seed: int
    before: float  # the base model's mean held-out reward
    after: float   # the tuned model's, on the same prompts and noise

    @property
    def gain(self) -> float:
        return self.after - self.before


def train(name: str, folders: dict[str, Path], seed: int, run_dir: Path,
          *extra: str) -> Outcome:
    """Train setting `name` with `seed` into `run_dir`, as train.py would; the held-out outcome."""
    import accelerate.utils

    from tests.conftest import compose_cfg
    from vader.build import build_trainer

    reward, settings = SETTINGS[name]
    cfg = compose_cfg(*reward(folders), *settings, *EVAL, f"seed={seed}", *extra)
    accelerate.utils.set_seed(cfg.seed)
    trainer = build_trainer(cfg, str(run_dir))
    trainer.setup()
    result = trainer.train()
    if name in MEASURES:
        return Outcome(seed, *MEASURES[name](trainer, folders))
    return Outcome(seed, result["before"], result["after"])


def assert_learns(outcomes: list[Outcome], min_mean_gain: float) -> None:
    """A majority of seeds raised the held-out reward, and the mean gain is at least
    `min_mean_gain` (a margin set well below the measured one, beside each test)."""
    gains = [o.gain for o in outcomes]
    improved = sum(g > 0 for g in gains)
    assert improved > len(gains) / 2, f"only {improved} of {len(gains)} seeds improved: {outcomes}"
    assert statistics.fmean(gains) >= min_mean_gain, \
        f"mean gain {statistics.fmean(gains):.4g} < {min_mean_gain}: {outcomes}"
