"""GRPO: group-relative policy optimisation for diffusion (Flow-GRPO, DanceGRPO; DDPO before them).
It needs no reward gradient, so any reward trains, differentiable or not.

A step: `group_size` videos of each of `groups_per_step` prompts are rolled out without gradients
by the stochastic sampler (vader.sampling.stochastic), which records each denoising step as a
Gaussian; the reward scores them; each video's advantage is its reward against its group's
(vader.algorithms.losses.group_advantages, gathered over every process, so all hold the same).
The update then re-evaluates the model at a `timestep_fraction` of each video's recorded steps
(one network call with gradients per step and micro-batch, so memory does not grow with the
number of sampling steps) and minimises PPO's clipped objective on ratio = p_new/p_old, plus
`beta` × the KL of the step means to the reference model: the same backbone with its LoRA
switched off, so no second copy of the weights. `inner_epochs` updates per step, each over every
kept video × trained step; groups whose rewards are all equal are dropped.

Defaults and their sources (docs/algorithms.md has the table): group_size 4 (Flow-GRPO's
Wan2.1 config), same_noise true (DanceGRPO's video scripts: a group's videos then differ only by
the steps' noise, which is what the policy gradient credits; in one measured run on the tiny
model the reward rose 9x more with it), clip_range 1e-4 (DDPO, Flow-GRPO, DanceGRPO), adv_clip_max 5 (all three),
timestep_fraction 0.6 (DanceGRPO's video scripts), exclude_final_step (DanceGRPO drops the last
step, Flow-GRPO trains int(0.99 × steps)), beta 0.004 (Flow-GRPO's Wan2.1 config), eta 1.0 (DDPO,
the DDIM anchor), inner_epochs 1 (all three), global_std false (Flow-GRPO's Wan2.1 config).
"""
from __future__ import annotations

import random
import time
from typing import Any

import torch

from vader.algorithms.losses import approx_kl, gaussian_kl, group_advantages, ppo_clip_loss
from vader.data.order import prompt_at
from vader.evaluation.evaluate import lora_disabled, set_lora_dropout
from vader.frames import frames_to_decode, score
from vader.protocols import Backbone, ItemLoss, Plan, Reward, Run, info_numbers
from vader.sampling.differentiable import guided_prediction
from vader.sampling.seeds import STEPS, TRAIN, generator_seed
from vader.sampling.stochastic import (Trajectory, log_prob, rollout, select_cond, step_kernel)
from vader.sampling.windows import in_windows, video_noise, windows_of


class GRPO:
    progress = ("reward", "clip_frac")
    data = None  # learns from its own samples
    long_videos = ("window",)  # long.* keys its sampler takes (keyframes: not in a trajectory yet)

    def __init__(self, group_size: int = 4, groups_per_step: int = 2, same_noise: bool = True,
                 eta: float = 1.0, clip_range: float = 1e-4, adv_clip_max: float = 5.0,
                 global_std: bool = False, timestep_fraction: float = 0.6,
                 exclude_final_step: bool = True, beta: float = 0.004, inner_epochs: int = 1):
        problems = {
            "group_size": (group_size >= 2, f"{group_size}: a group needs at least 2 videos to "
                           "compare (Flow-GRPO uses 4 to 24)"),
            "groups_per_step": (groups_per_step >= 1, f"{groups_per_step}: use 1 or more"),
            "eta": (eta > 0, f"{eta}: a DDIM step with eta = 0 is deterministic and has no "
                    "log-probability, so GRPO cannot weigh it; use eta > 0 (DDPO: 1.0)"),
            "timestep_fraction": (0 < timestep_fraction <= 1, f"{timestep_fraction}: the share "
                                  "of each video's steps to train must be in (0, 1]"),
            "clip_range": (clip_range > 0, f"{clip_range}: use a positive range (1e-4)"),
            "adv_clip_max": (adv_clip_max > 0, f"{adv_clip_max}: use a positive bound (5)"),
            "beta": (beta >= 0, f"{beta}: the KL weight cannot be negative"),
            "inner_epochs": (inner_epochs >= 1, f"{inner_epochs}: use 1 or more"),
        }
        for key, (ok, why) in problems.items():
            if not ok:
                raise ValueError(f"algorithm.{key}={why}")
        self.group_size, self.groups_per_step, self.same_noise = group_size, groups_per_step, same_noise
        self.eta, self.clip_range, self.adv_clip_max = eta, clip_range, adv_clip_max
        self.global_std, self.timestep_fraction = global_std, timestep_fraction
        self.exclude_final_step, self.beta, self.inner_epochs = exclude_final_step, beta, inner_epochs

    # --- checks ----------------------------------------------------------------------------
    def check(self, cfg: Any, num_processes: int) -> None:
        videos = self.group_size * self.groups_per_step
        if videos % num_processes:
            raise ValueError(
                f"algorithm.groups_per_step={self.groups_per_step} × algorithm.group_size="
                f"{self.group_size} = {videos} videos per step cannot be shared evenly by "
                f"{num_processes} processes; make it a multiple of {num_processes} (groups may "
                "span processes)")
        if cfg.gradient_accumulation_steps != 1:
            raise ValueError(
                f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}: GRPO already "
                "accumulates over every video and trained step of a step in one update; for a "
                "bigger batch raise algorithm.groups_per_step (train_batch_size is the videos per "
                "network call)")

    def check_models(self, cfg: Any, backbone: Backbone, reward: Reward) -> None:
        _, kernel, timesteps = self._schedule(backbone, cfg.num_inference_steps)
        if not self._eligible(kernel, timesteps):
            raise ValueError(f"num_inference_steps={cfg.num_inference_steps} leaves no step "
                             "to train once the final one is excluded; raise it, or set "
                             "algorithm.exclude_final_step=false")

    def setup(self, run: Run) -> None:
        self.run = run
        world = run.accelerator.num_processes
        self.videos = self.group_size * self.groups_per_step  # per step, all processes
        self.local = self.videos // world
        self.first = run.accelerator.process_index * self.local  # this process's first video
        # The schedule is the same every step: its step kernel, the steps that may be trained,
        # and how many of them each video trains (int(fraction × eligible), at least 1).
        self.scheduler, self.kernel, timesteps = self._schedule(run.backbone,
                                                                run.cfg.num_inference_steps)
        self.eligible = self._eligible(self.kernel, timesteps)
        self.per_video = max(1, int(self.timestep_fraction * len(self.eligible)))
        self.windows = windows_of(run.cfg.long)  # long videos in windows (docs/long_video.md)

    def _schedule(self, backbone: Backbone, num_steps: int) -> tuple[Any, Any, torch.Tensor]:
        """The backbone's scheduler set to `num_steps`, its stochastic step kernel (which raises,
        naming the fix, for a scheduler it cannot use), and its timesteps."""
        scheduler = backbone.make_scheduler()
        scheduler.set_timesteps(num_steps)
        return scheduler, step_kernel(scheduler, self.eta), scheduler.timesteps

    def _eligible(self, kernel: Any, timesteps: torch.Tensor) -> list[int]:
        """Step indices that may be trained: those with a non-zero std (a step that draws no
        noise has no log-probability), less the final step when excluded."""
        steps = [i for i, std in enumerate(kernel.std(timesteps).tolist()) if std > 0]
        final = len(timesteps) - 1
        return steps[:-1] if self.exclude_final_step and steps and steps[-1] == final else steps

    def trained_steps(self, step: int, video: int, epoch: int) -> list[int]:
        """The steps video `video` (of all processes, in this step) trains in `epoch`:
        `per_video` of the eligible ones, drawn from the seed, so every process and a resumed
        run draw the same."""
        g = torch.Generator().manual_seed(generator_seed(
            f"{STEPS}:{epoch}", self.run.cfg.seed, step * self.videos + video))
        order = torch.randperm(len(self.eligible), generator=g)[:self.per_video]
        return [self.eligible[int(i)] for i in order]

    # --- the step --------------------------------------------------------------------------
    def plan(self, step: int) -> Plan:
        run, cfg, acc = self.run, self.run.cfg, self.run.accelerator
        start = time.perf_counter()
        mine = range(self.first, self.first + self.local)
        prompts = [prompt_at(run.train_prompts, cfg.seed, step * self.groups_per_step
                             + v // self.group_size) for v in mine]
        own = [generator_seed(TRAIN, cfg.seed, step * self.videos + v) for v in mine]
        initial = [generator_seed(TRAIN, cfg.seed, step * self.videos
                                  + v // self.group_size * self.group_size) for v in mine] \
            if self.same_noise else own
        set_lora_dropout(run.model, False)  # the rollout policy is the one the update re-evaluates
        trajectories, rewards, infos = [], [], []
        for lo in range(0, self.local, cfg.train_batch_size):
            part = slice(lo, lo + cfg.train_batch_size)
            traj, values, info = self._rollout(prompts[part], initial[part], own[part])
            trajectories.append(traj)
            rewards.append(values)
            infos.append(info)
        set_lora_dropout(run.model, True)
        self.traj = _concat(trajectories, cfg.guidance_scale > 1.0)
        local_rewards = torch.cat(rewards).float().to(acc.device)
        all_rewards = acc.gather(local_rewards) if acc.num_processes > 1 else local_rewards
        advantages, kept = group_advantages(all_rewards, self.group_size, self.global_std,
                                            clip=self.adv_clip_max)
        self.all_advantages = advantages  # the same on every process
        self.advantages = advantages[self.first:self.first + self.local]
        kept_local = kept[self.first:self.first + self.local].nonzero().flatten().tolist()
        total = int(kept.sum()) * self.per_video  # (video, step) terms, all processes
        updates = []
        if total:  # otherwise no group had a signal: nothing to learn from this step
            scale = acc.num_processes / total  # DDP averages over processes: the mean over terms
            for epoch in range(self.inner_epochs):
                steps = {v: self.trained_steps(step, self.first + v, epoch) for v in kept_local}
                items = [(chunk, [steps[v][j] for v in chunk], scale)
                         for lo in range(0, len(kept_local), cfg.train_batch_size)
                         for chunk in [kept_local[lo:lo + cfg.train_batch_size]]
                         for j in range(self.per_video)]
                # A process with nothing kept still joins the update's gradient all-reduce.
                updates.append(items or [([0], [self.eligible[0]], 0.0)])
        # One copy to the host for every number of the step: each read waits for the device.
        info_keys = list(infos[0])
        info = torch.stack([torch.stack([torch.as_tensor(i[k], dtype=torch.float32, device=acc.device)
                                         for i in infos]
                                        ).mean() for k in info_keys]) \
            if info_keys else torch.zeros(0, device=acc.device)
        info = acc.reduce(info, "mean") if acc.num_processes > 1 else info
        groups = all_rewards.reshape(-1, self.group_size)
        stats = torch.cat([torch.stack([
            all_rewards.mean(), all_rewards.std(correction=0), groups.std(1, correction=0).mean(),
            advantages.abs().mean(), advantages.max(), advantages.min(),
            (~kept.reshape(-1, self.group_size)[:, 0]).sum().float()]), info]).tolist()
        names = ("reward", "reward_std", "group_reward_std", "advantage_abs", "advantage_max",
                 "advantage_min", "dropped_groups")
        numbers = dict(zip(names, stats))
        numbers["dropped_groups"] = int(numbers["dropped_groups"])
        numbers.update({f"reward_info/{k}": v for k, v in zip(info_keys, stats[len(names):])})
        numbers["rollout_seconds"] = time.perf_counter() - start
        return Plan(updates, numbers)

    def _rollout(self, prompts: list[str], initial: list[int],
                 own: list[int]) -> tuple[Trajectory, torch.Tensor, dict]:
        run, cfg, acc = self.run, self.run.cfg, self.run.accelerator
        noise = video_noise(run.backbone.latent_shape(len(prompts), cfg.num_frames, cfg.height,
                                                      cfg.width), initial, self.windows, acc.device)
        with torch.no_grad(), acc.autocast():
            traj = rollout(run.backbone, run.model, prompts, noise,
                           num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, eta=self.eta, step_seeds=own,
                           batch_cfg=cfg.batch_cfg, windows=self.windows)
            # Each video's frames chosen from its own seed, as evaluation chooses them.
            rngs = [random.Random(s) for s in own]
            frames = torch.cat([run.backbone.decode(traj.final[b:b + 1],
                                                    frames_to_decode(run.reward, cfg.num_frames, r))
                                for b, r in enumerate(rngs)])
            values, info = score(run.reward, frames.float(), prompts, rngs)
        return traj, values.detach(), info_numbers(info)

    def loss(self, item: tuple[list[int], list[int], float]) -> ItemLoss:
        """The clipped objective (+ beta × KL) of videos `index` at their steps `steps`."""
        run, cfg = self.run, self.run.cfg
        index, steps, scale = item
        idx, at = torch.tensor(index), torch.tensor(steps)
        traj = self.traj
        x, x_next = traj.latents[at, idx], traj.latents[at + 1, idx]
        t = traj.timesteps[at]
        guided = cfg.guidance_scale > 1.0
        cond = select_cond(traj.cond, idx.to(traj.cond.device), guided)
        x_in = self.kernel.model_input(x, t)  # per video: each is at its own step
        if self.beta > 0:
            # The reference: the same weights with the LoRA off, without gradients, through the
            # bare module (no DDP bookkeeping for a pass that trains nothing).
            bare = run.accelerator.unwrap_model(run.model)
            with torch.no_grad(), lora_disabled(bare):
                ref_out = in_windows(lambda w: guided_prediction(
                    run.backbone, bare, w, t.to(x.device), cond, cfg.guidance_scale, cfg.batch_cfg),
                    x_in, self.windows)
                ref_mean, _ = self.kernel.gaussian(ref_out, t, x)
        # In windows, each window's call checkpointed: the update's memory follows the window.
        out = in_windows(lambda w: guided_prediction(run.backbone, run.model, w, t.to(x.device), cond,
                                                     cfg.guidance_scale, cfg.batch_cfg),
                         x_in, self.windows, checkpointed=cfg.gradient_checkpointing)
        mean, std = self.kernel.gaussian(out, t, x)
        new = log_prob(x_next, mean, std)
        old = traj.log_probs[at, idx]
        ratio = torch.exp(new - old)
        advantages = self.advantages[idx.to(self.advantages.device)]
        policy = ppo_clip_loss(advantages, ratio, self.clip_range)
        kl = gaussian_kl(mean, ref_mean, std) if self.beta > 0 else torch.zeros_like(policy)
        per_video = policy + self.beta * kl
        numbers = {"policy_loss": policy.detach().mean(), "ratio": ratio.detach().mean(),
                   "approx_kl": approx_kl(new.detach(), old),
                   "clip_frac": ((ratio.detach() - 1).abs() > self.clip_range).float().mean(),
                   "kl": kl.detach().mean()}
        return ItemLoss(per_video.sum() * scale, numbers, weight=len(index) if scale else 0.0)


def _concat(parts: list[Trajectory], guided: bool) -> Trajectory:
    """Rollout chunks as one trajectory of all this process's videos (with guidance, each
    chunk's conditioning is its empty-prompt half, then its prompts' half)."""
    if len(parts) == 1:
        return parts[0]
    halves = [p.cond.chunk(2) if guided else (p.cond,) for p in parts]
    cond = torch.cat([torch.cat([h[i] for h in halves]) for i in range(len(halves[0]))])
    return Trajectory(*(torch.cat([getattr(p, k) for p in parts], 1)
                        for k in ("latents", "means", "stds", "log_probs")),
                      parts[0].timesteps, cond)
