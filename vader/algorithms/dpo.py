"""Diffusion-DPO (`algorithm=dpo`; Wallace et al. 2024, "Diffusion Model Alignment Using Direct
Preference Optimization"): learn from preference pairs, a prompt with a chosen and a rejected
video, without a reward model.

A pair's two videos are noised with the same noise to the same timestep; the model's squared
errors on both (e_w, e_l) are compared with the reference's (the same backbone with its LoRA
switched off, so no second copy of the weights), and the loss −log σ(−β/2 · ((e_w − e_w,ref) −
(e_l − e_l,ref))) (vader.algorithms.losses.diffusion_dpo_logit) pushes the model to denoise the
chosen video better, relative to the reference, than the rejected one. β = 5000 is the paper's.

`pairs=offline` (default) reads them from a dataset (`dataset=pairs`, `videodpo`, `pickapic`),
each with an optional weight. `pairs=online` makes them from the model's own samples: each step
`group_size` videos of each of `groups_per_step` prompts are sampled without gradients (the
top-level sampler settings), the reward scores them, and each group's best and worst form a pair
(on-policy DPO); a group whose videos all score the same is dropped. Any reward works, with or
without gradients. Logged (TRL's names where it has them): loss, implicit_acc (the share of pairs
the model prefers more than the reference does; ties count half), rewards/chosen,
rewards/rejected, rewards/margins (the implicit rewards −β/2 · (e − e_ref) and their difference),
and the four errors.
"""
from __future__ import annotations

import random
import time
from typing import Any

import torch

from vader.algorithms.denoising import data_plan, denoising_errors, draws, noise_for, timestep_draw
from vader.algorithms.losses import diffusion_dpo_logit, diffusion_dpo_loss, implicit_accuracy
from vader.data.loader import Sample
from vader.data.order import prompt_at
from vader.data.stream import TrainingData, frame_rule, training_data
from vader.evaluation.evaluate import lora_disabled, set_lora_dropout
from vader.frames import frames_to_decode, score
from vader.protocols import Backbone, ItemLoss, Plan, Reward, Run
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.seeds import TRAIN, generator_seed

PAIRS = ("offline", "online")


class DPO:
    progress = ("loss", "implicit_acc")

    def __init__(self, beta: float = 5000.0, pairs: str = "offline", group_size: int = 4,
                 groups_per_step: int = 2, same_noise: bool = False):
        if beta <= 0:
            raise ValueError(f"algorithm.beta={beta}: use a positive β (the paper: 5000)")
        if pairs not in PAIRS:
            raise ValueError(f"algorithm.pairs={pairs!r}: choose offline (a dataset of pairs) or "
                             "online (pairs made from the model's samples by the reward)")
        if group_size < 2:
            raise ValueError(f"algorithm.group_size={group_size}: a pair needs at least 2 videos")
        if groups_per_step < 1:
            raise ValueError(f"algorithm.groups_per_step={groups_per_step}: use 1 or more")
        self.beta, self.pairs = beta, pairs
        self.group_size, self.groups_per_step = group_size, groups_per_step
        self.same_noise = same_noise
        self.data = "pairs" if pairs == "offline" else None
        self.stream = None

    def check(self, cfg: Any, num_processes: int) -> None:
        if self.pairs == "offline":
            frame_rule(cfg)
        elif self.same_noise and cfg.eta <= 0:
            raise ValueError(f"algorithm.same_noise=true with eta={cfg.eta}: a group's videos "
                             "would be identical (deterministic DDIM from the same noise); set "
                             "eta > 0 (e.g. eta=1.0) or algorithm.same_noise=false")
        elif self.groups_per_step % num_processes:
            raise ValueError(f"algorithm.groups_per_step={self.groups_per_step} cannot be shared "
                             f"evenly by {num_processes} processes (each makes whole groups); make "
                             f"it a multiple of {num_processes}")

    def check_models(self, cfg: Any, backbone: Backbone, reward: Reward) -> None:
        pass  # online pairs take any reward, with or without gradients

    def setup(self, run: Run) -> None:
        self.run = run
        if self.pairs == "offline":
            self.stream = training_data(run)
        self.timestep = timestep_draw(run.backbone)

    # --- pairs ------------------------------------------------------------------------------
    def plan(self, step: int) -> Plan:
        acc = self.run.accelerator
        if self.stream is not None:
            samples, total = self.stream.step(step)
            return data_plan(samples, total, acc.num_processes,
                             {**self.stream.numbers(), "pairs": total})
        start = time.perf_counter()
        pairs, numbers = self.online_pairs(step)
        local = torch.tensor([float(len(pairs))], device=acc.device)
        total = int((acc.reduce(local, "sum") if acc.num_processes > 1 else local).item())
        batch = self.run.cfg.train_batch_size
        micro = [pairs[lo:lo + batch] for lo in range(0, len(pairs), batch)]
        numbers.update(pairs=total, rollout_seconds=time.perf_counter() - start)
        return data_plan(micro, total, acc.num_processes, numbers)

    def online_pairs(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        """This process's groups of step `step`: sampled, scored, and each group's best and worst
        as a pair (latents straight from the sampler: nothing to encode)."""
        run, cfg, acc = self.run, self.run.cfg, self.run.accelerator
        local = self.groups_per_step // acc.num_processes
        first = step * self.groups_per_step + acc.process_index * local
        set_lora_dropout(run.model, False)  # the policy as it samples, not as it trains
        pairs, rewards, gaps, dropped = [], [], [], 0
        for group in range(first, first + local):
            prompt = prompt_at(run.train_prompts, cfg.seed, group)
            seeds = [generator_seed(TRAIN, cfg.seed, group * self.group_size + j)
                     for j in range(self.group_size)]
            latents, values = self._sample_group(prompt, seeds)
            rewards.append(values)
            best, worst = int(values.argmax()), int(values.argmin())
            if values[best] == values[worst]:
                dropped += 1
                continue
            gaps.append(values[best] - values[worst])
            pairs.append(Sample(group, prompt, [latents[best], latents[worst]], [None, None],
                                [True, True]))
        set_lora_dropout(run.model, True)
        stats = torch.stack([torch.cat(rewards).mean(),
                             torch.stack(gaps).mean() if gaps else torch.zeros((), device=acc.device),
                             torch.tensor(float(dropped), device=acc.device)])
        stats = acc.reduce(stats, "mean") if acc.num_processes > 1 else stats
        reward, gap, drop = stats.tolist()
        return pairs, {"reward": reward, "reward_gap": gap,
                       "dropped_groups": drop * acc.num_processes}

    def _sample_group(self, prompt: str, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each video's own seed draws its eta noise; its initial noise too, or, with
        `same_noise`, the group's first seed does, so the videos differ by the steps' noise only
        and the best and worst differ mostly in what the reward sees."""
        run, cfg, acc = self.run, self.run.cfg, self.run.accelerator
        latents, values = [], []
        for lo in range(0, len(seeds), cfg.train_batch_size):
            part = seeds[lo:lo + cfg.train_batch_size]
            initial = [seeds[0]] * len(part) if self.same_noise else part
            noise = make_noise(run.backbone.latent_shape(len(part), cfg.num_frames, cfg.height,
                                                         cfg.width), initial, acc.device)
            with torch.no_grad(), acc.autocast():
                z = sample(run.backbone, run.model, [prompt] * len(part), noise,
                           num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, cutoff=None,
                           eta=cfg.eta, step_seeds=part, batch_cfg=cfg.batch_cfg)
                rngs = [random.Random(s) for s in part]
                frames = torch.cat([run.backbone.decode(z[b:b + 1], frames_to_decode(
                    run.reward, cfg.num_frames, r)) for b, r in enumerate(rngs)])
                v, _ = score(run.reward, frames.float(), [prompt] * len(part), rngs)
            latents.append(z.float())
            values.append(v.detach().float())
        return torch.cat(latents), torch.cat(values)

    # --- the loss ---------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> torch.Tensor:
        if self.stream is not None:
            return self.stream.embed(texts)
        with torch.no_grad():  # one prompt at a time, as the stream does: batch-independent
            return torch.cat([self.run.backbone.encode_prompts([t]) for t in texts])

    def errors(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """(B,) errors of the model and the reference on each pair's chosen and rejected video,
        both noised with the pair's one noise to its one timestep."""
        run, cfg = self.run, self.run.cfg
        chosen = torch.stack([s.videos[0] for s in samples])
        rejected = torch.stack([s.videos[1] for s in samples])
        positions = [s.position for s in samples]
        t, _ = draws(positions, cfg.seed, self.timestep)
        noise = noise_for(tuple(chosen.shape), positions, cfg.seed, chosen.device)
        cond = self.embed([TrainingData.prompt(s) for s in samples])  # online pairs: their text
        # Chosen and rejected in one call: the same noise, timestep and prompt for both halves.
        both = (torch.cat([chosen, rejected]), torch.cat([noise, noise]), torch.cat([t, t]),
                torch.cat([cond, cond]))
        model = denoising_errors(run.backbone, run.model, *both)
        bare = run.accelerator.unwrap_model(run.model)
        with torch.no_grad(), lora_disabled(bare):
            ref = denoising_errors(run.backbone, bare, *both)
        (w, l), (w_ref, l_ref) = model.chunk(2), ref.chunk(2)
        return {"chosen": w, "rejected": l, "chosen_ref": w_ref, "rejected_ref": l_ref}

    def loss(self, item: tuple[list[Sample] | None, float]) -> ItemLoss:
        samples, scale = item
        if samples is None:  # nothing here this step: a zero-weight pass keeps DDP in step
            samples = [self._placeholder()]
        e = self.errors(samples)
        logit = diffusion_dpo_logit(e["chosen"], e["chosen_ref"], e["rejected"],
                                    e["rejected_ref"], self.beta)
        weights = torch.tensor([s.weight for s in samples], device=logit.device)
        loss = diffusion_dpo_loss(logit, weights)
        half = -0.5 * self.beta
        numbers = {"loss": loss.detach().mean(), "implicit_acc": implicit_accuracy(logit.detach()),
                   "rewards/chosen": (half * (e["chosen"] - e["chosen_ref"])).detach().mean(),
                   "rewards/rejected": (half * (e["rejected"] - e["rejected_ref"])).detach().mean(),
                   "rewards/margins": logit.detach().mean(),
                   **{f"error/{k}": v.detach().mean() for k, v in e.items()}}
        return ItemLoss(loss.sum() * scale, numbers, weight=len(samples) if scale else 0.0)

    def _placeholder(self) -> Sample:
        cfg = self.run.cfg
        shape = self.run.backbone.latent_shape(1, cfg.num_frames, cfg.height, cfg.width)[1:]
        zero = torch.zeros(shape, device=self.run.accelerator.device)
        return Sample(0, "", [zero, zero], [None, None], [True, True])

    def report(self) -> dict[str, Any]:
        return {"data": self.stream.report()} if self.stream is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict() if self.stream is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.load_state_dict(state)
