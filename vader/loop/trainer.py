"""The training loop, written once for every algorithm: optimizer updates with accumulation,
clipping and skipped non-finite updates, checkpoints and exact resume, stop signals, the
evaluation schedule, logging, and several processes. What a step computes is the algorithm's
(`vader.protocols.Algorithm`, one module per algorithm in `vader/algorithms/`): the loop asks it
to `plan` a step, and for the `loss` of each micro-batch, and never looks inside either.
"""
from __future__ import annotations

import contextlib
import inspect
import random
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from vader.config import TrainConfig
from vader.data.prompts import PromptSource
from vader.data.order import prompt_at
from vader.evaluation.evaluate import (Embedder, VideoSpec, base_videos, evaluate, headline,
                                       set_lora_dropout)
from vader.evaluation.stats import pixel_embedding
from vader.frames import check_frames, frames_to_decode
from vader.loop import checkpoint as ckpt
from vader.loop import sharding
from vader.loop.curriculum import Curriculum, gate_values
from vader.loop.guards import (Interrupted, NonFiniteGuard, StopSignals, check_lora_fits, clipped_norm,
                               update)
from vader.loop.settings import check_settings, make_accelerator
from vader.loop.tracking import MetricsLog, plot_metrics, plot_rewards
from vader.protocols import Algorithm, Backbone, Reward, Run
from vader.sampling.seeds import CALIBRATE, generator_seed


class Trainer:
    """setup -> train -> (evaluate, save_checkpoint). Built objects in, files in `run_dir` out."""

    def __init__(self, cfg: TrainConfig, algorithm: Algorithm, backbone: Backbone, reward: Reward,
                 prompts: PromptSource, run_dir: Path | str, accelerator: Accelerator | None = None,
                 reward_name: str = "reward", eval_rewards: dict[str, Reward] | None = None,
                 embed: Embedder = pixel_embedding, data: list | None = None,
                 metrics: list[str] | None = None, set_metrics: dict | None = None,
                 curriculum: Curriculum | None = None):
        check_settings(cfg)
        self.accelerator = accelerator or make_accelerator(cfg, Path(run_dir))
        backbone.check_video(cfg.num_frames, cfg.height, cfg.width)
        check_frames(reward.frames, cfg.num_frames)
        if not cfg.only_val:
            algorithm.check(cfg, self.accelerator.num_processes)
            algorithm.check_models(cfg, backbone, reward)
        self.cfg, self.algorithm, self.backbone, self.reward, self.prompts = \
            cfg, algorithm, backbone, reward, prompts
        # The training reward first: evaluation reports it, then the others (generalisation).
        # A guard (the motion floor) is training's business: evaluation scores the reward itself.
        self.rewards = {reward_name: getattr(reward, "unguarded", reward),
                        **{k: v for k, v in (eval_rewards or {}).items() if k != reward_name}}
        self.reward_name, self.embed, self.data = reward_name, embed, data
        # Scored at every evaluation and plotted over training (eval_metrics; FVD: fvd.reference).
        self.metric_names, self.set_metrics = list(metrics or []), dict(set_metrics or {})
        # Rewards that read a class from each prompt check every prompt now, on every process,
        # rather than failing on one process mid-run while the others wait in a collective.
        for name, r in self.rewards.items():  # evaluation rewards see held-out prompts only
            if hasattr(r, "check_prompts"):
                train = prompts.train if name == reward_name and not cfg.only_val else []
                r.check_prompts([*train, *prompts.val])
        scheduler = backbone.make_scheduler()
        if cfg.eta > 0 and "eta" not in inspect.signature(scheduler.step).parameters:
            raise ValueError(f"eta={cfg.eta} needs a DDIM scheduler; {type(scheduler).__name__} "
                             "has no eta. Set eta=0 or backbone.scheduler=ddim")
        self.run_dir = Path(run_dir)
        self.is_main = self.accelerator.is_main_process
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.is_main)
        self.spec = VideoSpec.of(cfg)
        self.curriculum = curriculum
        if curriculum is not None:  # every stage's length checked now, then the first applied
            for n in curriculum.lengths:
                check_settings(replace(cfg, num_frames=n))
                backbone.check_video(n, cfg.height, cfg.width)
                check_frames(reward.frames, n)
            curriculum.check_names([*self.rewards, *self.metric_names, *self.set_metrics, "motion"])
            self._apply_stage()
        self.step = 0
        self.nonfinite = NonFiniteGuard(cfg.max_nonfinite_in_a_row)
        self.last_checkpoint: Path | None = None

    # --- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.backbone.to(acc.device)
        if cfg.lora_path is not None:
            self._load_lora(cfg.lora_path)
        module = self.backbone.trainable_module()
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"backbone {self.backbone.name!r} has no trainable (LoRA) parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(cfg.lr_warmup_steps, 0)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        # Algorithms call the module accelerate returns (DDP when several processes run), so
        # gradients are averaged across processes; calling the bare module would train N LoRAs.
        sharding.name_blocks(acc, module)
        self.model, self.optimizer = acc.prepare(module, self.optimizer)
        # FSDP replaces the parameters with sharded ones; the optimizer holds the current ones.
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if (engine := sharding.describe(acc)) is not None:
            acc.print(engine)
        if not cfg.only_val:
            self.algorithm.setup(Run(cfg, self.backbone, self.reward, list(self.prompts.train),
                                     acc, self.model, data=self.data, run_dir=self.run_dir))
        mode = ckpt.resume_mode(cfg.resume)
        if mode == "path":
            folder = ckpt.resolve_lora_path(cfg.resume).parent
        else:
            folder = ckpt.latest_checkpoint(self.run_dir / "checkpoints") if mode == "auto" else None
        if folder is not None and not cfg.only_val:
            self._resume(folder)
        if hasattr(self.reward, "calibrate") and not cfg.only_val:
            if self.reward.reference is None:  # not given, not resumed
                self._calibrate_reward()
            acc.print(self.reward.describe(self.reward_name))
        if cfg.logger != "none":
            acc.init_trackers("vader", config={k: v for k, v in vars(cfg).items()
                                               if isinstance(v, (int, float, str, bool))})

    def _load_lora(self, path: Path | str) -> None:
        file = ckpt.resolve_lora_path(path)
        check_lora_fits(ckpt.read_lora_metadata(file), self.backbone.lora_metadata(),
                        self.backbone.name, file)
        # Under FSDP the file's whole tensors are cut like the current shards. peft 0.21 with
        # transformers 5 does that itself (its tensor-parallel path); requirements allow older peft.
        current = self.backbone.lora_state_dict()
        self.backbone.load_lora_state_dict(sharding.shard_like(ckpt.load_lora(file), current))

    def _resume(self, folder: Path) -> None:
        state = ckpt.load_training_state(folder)  # first: an unreadable state loads nothing
        self._load_lora(folder)
        self.optimizer.load_state_dict(sharding.shard_optimizer_state(state["optimizer"], self.params))
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.nonfinite.load_state_dict(state.get("nonfinite", {}))  # absent from older checkpoints
        if hasattr(self.reward, "load_training_state"):
            self.reward.load_training_state(state.get("reward", {}))
        if hasattr(self.algorithm, "load_state_dict"):
            self.algorithm.load_state_dict(state.get("algorithm", {}))
        if self.curriculum is not None:  # continue in the checkpoint's stage
            self.curriculum.load_state_dict(state.get("curriculum", {}))
            self._apply_stage()
        if self.accelerator.scaler is not None and "scaler" in state:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        # The final evaluation is the one at num_steps, and it runs again; a periodic one does not.
        self.metrics.truncate(self.step, keep_val_at_step=self.step < self.cfg.num_steps)
        self.last_checkpoint = folder
        self.accelerator.print(f"resumed from {folder} at step {self.step}")

    def _calibrate_reward(self) -> None:
        """Show a reward that measures itself against the base model (the motion guard) the
        base model's videos of `reference_videos` training prompts, decoded as for training.
        Every process makes the same videos from the same seeds, so all agree on the result."""
        cfg, n = self.cfg, self.reward.reference_videos
        prompts = [prompt_at(self.prompts.train, cfg.seed, i) for i in range(n)]
        frames = base_videos(self.backbone, self.accelerator.unwrap_model(self.model), prompts,
                             [generator_seed(CALIBRATE, cfg.seed, i) for i in range(n)], self.spec,
                             self.accelerator, cfg.val_batch_size)
        index = frames_to_decode(self.reward, cfg.num_frames, random.Random(cfg.seed))
        self.reward.calibrate(frames if index is None else frames[:, index.to(frames.device)], prompts)

    # --- training --------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One step: the algorithm's plan, then each of its updates: every micro-batch's loss
        backpropagated (gradients synchronised across processes on the last one only), clipped,
        and applied, or skipped on every process when anything was not finite."""
        acc = self.accelerator
        start = time.perf_counter()
        set_lora_dropout(self.model, True)  # backbone.lora_dropout; evaluation switches it off
        plan = self.algorithm.plan(self.step)
        planned = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        weight = torch.zeros((), device=acc.device)
        grad_norm, skipped_any = torch.full((1,), float("nan"), device=acc.device), False
        for items in plan.updates:
            norm, skipped = self._update(items, sums, weight)
            if not skipped:
                grad_norm = norm.detach().float().reshape(1)
                self.lr_schedule.step()
            skipped_any = skipped_any or bool(skipped)
            self.nonfinite.record(skipped, self.step + 1, "loss, reward or gradient",
                                  self.last_checkpoint)
        # Weighted means over all micro-batches of all processes: one all-reduce for every
        # logged number, and one copy to the host. The gradient norm, the same on every process,
        # joins after the reduce.
        keys = list(sums)
        local = torch.stack([weight, *(sums[k] for k in keys)])
        total, *summed, grad_norm = torch.cat([acc.reduce(local, "sum"), grad_norm]).tolist()
        numbers = {k: v / total if total else float("nan") for k, v in zip(keys, summed)}
        self.step += 1
        return {"split": "train", "step": self.step, **numbers, **plan.numbers,
                "grad_norm": grad_norm, "lr": self.lr_schedule.get_last_lr()[0],
                "seconds": time.perf_counter() - start,
                "update_seconds": time.perf_counter() - planned, "skipped": skipped_any,
                "nonfinite_updates": self.nonfinite.total,
                **({"overflow_updates": self.nonfinite.overflows,
                    "loss_scale": acc.scaler.get_scale()} if acc.scaler is not None else {})}

    def _update(self, items: list, sums: dict[str, torch.Tensor],
                weight: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        cfg, acc = self.cfg, self.accelerator
        # Non-finite losses seen in this update, counted on the device so the check costs no
        # synchronisation until the one all-reduce that decides the update.
        non_finite = torch.zeros((), device=acc.device)
        # Processes may hold different numbers of micro-batches (an algorithm that drops
        # samples); each synchronises gradients once, on its last. Under FSDP every forward pass
        # gathers weights from all processes, so each repeats its last micro-batch, weightless,
        # up to the largest count.
        passes = sharding.largest_count(acc, len(items))
        for i in range(passes):
            item, pad = items[min(i, len(items) - 1)], i >= len(items)
            with contextlib.nullcontext() if i == passes - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    result = self.algorithm.loss(item)
                acc.backward(result.loss * 0 if pad else result.loss)
            if pad:
                continue
            non_finite += (~torch.isfinite(result.loss.detach())).float()
            weight += result.weight
            for k, v in result.numbers.items():
                v = torch.as_tensor(v, device=acc.device).detach().float().reshape(())
                sums[k] = sums.get(k, torch.zeros((), device=acc.device)) + result.weight * v
        norm = clipped_norm(acc, self.params, cfg.max_grad_norm)
        # Clipping has scaled NaN gradients by NaN; a skipped update discards them.
        skipped = update(acc, self.optimizer, non_finite, norm)
        self.optimizer.zero_grad(set_to_none=True)
        return norm, skipped

    def evaluate(self, out_dir: Path | None, models: tuple[str, ...] = ("base", "tuned"),
                 rewards: dict[str, Reward] | None = None, gallery: bool = True,
                 title: str = "", on_summary=None) -> dict:
        cfg = self.cfg
        seeds = [cfg.val_seed + i for i in range(cfg.num_val_seeds)]
        model = self.accelerator.unwrap_model(self.model)
        return evaluate(self.backbone, model, rewards or self.rewards, self.prompts.val, seeds,
                        self.spec, self.accelerator, cfg.val_batch_size, out_dir, models,
                        self.embed, cfg.fps, title=title, checkpoint=self._checkpoint_name(),
                        gallery=gallery, on_summary=on_summary, video_format=cfg.video_format,
                        set_metrics=self.set_metrics)

    def _checkpoint_name(self) -> str | None:
        if self.cfg.only_val:
            return str(self.cfg.lora_path) if self.cfg.lora_path else None
        return ckpt.step_dir_name(self.step)

    def _log_val(self, summary: dict) -> None:
        tuned = summary["per_model"]["tuned"]
        value = tuned[f"reward/{self.reward_name}"]["mean"]
        metrics = {**{f"val/{m}": tuned[f"reward/{m}"]["mean"] for m in self.metric_names},
                   **{f"val/{m}": tuned[m] for m in self.set_metrics}}
        self.metrics.write({"split": "val", "step": self.step, "val_reward": value, **metrics})
        self.accelerator.log({"val/reward": value, **metrics}, step=self.step)

    def _periodic_evaluation(self) -> None:
        """The tuned model on the training reward and the eval_metrics: a point on their curves."""
        names = [self.reward_name, *self.metric_names]
        self.evaluate(self.run_dir / "eval" / ckpt.step_dir_name(self.step), models=("tuned",),
                      rewards={n: self.rewards[n] for n in names}, gallery=False,
                      on_summary=self._log_val)

    def _apply_stage(self) -> None:
        """Train and evaluate at the curriculum stage's length from now on."""
        self.cfg.num_frames = self.curriculum.num_frames  # the algorithm reads the same cfg
        self.spec = replace(self.spec, num_frames=self.cfg.num_frames)

    def _curriculum_check(self) -> None:
        """The tuned model on held-out prompts at the stage's length, written with its gallery to
        eval/stages/<stage>/ (the stage's last check stays), then the curriculum's decision,
        logged; on advancing, the next stage's length applies."""
        cur, names = self.curriculum, [self.reward_name, *self.metric_names]
        summary = self.evaluate(self.run_dir / "eval" / "stages" / cur.folder(), models=("tuned",),
                                rewards={n: self.rewards[n] for n in names}, on_summary=self._log_val,
                                title=f"{self.run_dir.name}: {cur.describe()}, step {self.step}")
        record = cur.decide(self.step, gate_values(summary))
        self.metrics.write(record)
        self.accelerator.log({"curriculum/stage": cur.stage + 1,
                              "curriculum/num_frames": cur.num_frames}, step=self.step)
        if "note" in record:
            self.accelerator.print(record["note"])
            self._apply_stage()

    def final_evaluation(self) -> dict:
        """Base against tuned on every evaluation reward, written to eval/ with the gallery."""
        def log(summary: dict) -> None:
            if hasattr(self.algorithm, "report"):  # e.g. the samples a dataset skipped, by reason
                summary["training"] = self.algorithm.report()
            if self.curriculum is not None:  # every stage: when it began and ended, and how
                self.curriculum.finish(self.step, gate_values(summary))
                summary["curriculum"] = self.curriculum.report()
            self._log_val(summary)
            if self.is_main:
                base, plots = summary["per_model"]["base"], self.run_dir / "eval" / "plots"
                records = self.metrics.read()
                plot_rewards(records, plots / "reward_over_steps.png",
                             base=base[f"reward/{self.reward_name}"]["mean"])
                plot_metrics(records, plots / "metrics_over_steps.png",
                             {**{m: base[f"reward/{m}"]["mean"] for m in self.metric_names},
                              **{m: base[m] for m in self.set_metrics}})
        title = f"{self.run_dir.name}: trained on {self.reward_name}, step {self.step}"
        if self.curriculum is not None:
            title += f", {self.curriculum.describe()}"
        return self.evaluate(self.run_dir / "eval", title=title, on_summary=log)

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint (main process). A write that fails (a full disk) stops
        every process with the main one's message; earlier checkpoints stay as they were."""
        acc = self.accelerator
        # Whole tensors, gathered on every process under FSDP: the same files on every engine.
        lora = sharding.whole(self.backbone.lora_state_dict())
        optimizer = sharding.whole_optimizer_state(self.optimizer)

        def write() -> Path:
            state = {"step": self.step, "optimizer": optimizer,
                     "lr_schedule": self.lr_schedule.state_dict(), "seed": self.cfg.seed,
                     "torch_rng": torch.get_rng_state(), "nonfinite": self.nonfinite.state_dict()}
            if hasattr(self.algorithm, "state_dict"):
                state["algorithm"] = self.algorithm.state_dict()
            if self.curriculum is not None:
                state["curriculum"] = self.curriculum.state_dict()
            if hasattr(self.reward, "training_state"):  # the motion guard's reference
                state["reward"] = self.reward.training_state()
            if acc.scaler is not None:  # fp16: the loss scale it has found, and its growth count
                state["scaler"] = acc.scaler.state_dict()
            return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, lora, state,
                                        self.backbone.lora_metadata(),
                                        keep=self.cfg.keep_checkpoints, backbone=self.backbone.name)

        folder = ckpt.save_on_main(acc, write)
        self.last_checkpoint = folder or self.run_dir / "checkpoints" / ckpt.step_dir_name(self.step)
        return folder

    def train(self) -> dict:
        """Train to `num_steps` (checkpointing and evaluating on the way), then compare the tuned
        model with its base on held-out prompts. Returns {"before": the base model's mean held-out
        reward, "after": the tuned model's, "step", "summary"}."""
        cfg, acc = self.cfg, self.accelerator
        bar = tqdm(total=cfg.num_steps, initial=self.step, disable=not self.is_main,
                   desc="training", dynamic_ncols=True)
        with StopSignals() as stop:
            while self.step < cfg.num_steps:
                record = self.train_step()
                if self.curriculum is not None:
                    record.update(stage=self.curriculum.stage + 1, num_frames=cfg.num_frames)
                self.metrics.write(record)
                acc.log({k: v for k, v in record.items() if k not in ("split", "step")},
                        step=self.step)
                bar.update(1)
                bar.set_postfix({**{k: f"{record[k]:.4f}" for k in self.algorithm.progress
                                    if k in record}, "skipped": self.nonfinite.total,
                                 **({"stage": record["stage"]} if "stage" in record else {})})
                # Before the checkpoint, so a checkpoint holds the stage its step ends in.
                checked = self.curriculum is not None and self.curriculum.due(self.step)
                if checked:
                    self._curriculum_check()
                saved = self.step % cfg.checkpoint_every == 0 or self.step == cfg.num_steps
                if saved:
                    self.save_checkpoint()
                stopping = stop.requested(acc)
                if not stopping and self.step % cfg.val_every == 0 and self.step < cfg.num_steps \
                        and not checked:  # a curriculum check has just logged the same numbers
                    self._periodic_evaluation()
                    # A signal during the evaluation stops here, not after one more step.
                    stopping = stop.requested(acc)
                if stopping:
                    bar.close()
                    self._stop(stop.signum, saved)
        bar.close()
        summary = self.final_evaluation()
        if self.is_main:
            print(headline(summary))
            print(f"gallery: {self.run_dir / 'eval' / 'index.html'}")
        acc.end_training()
        key = f"reward/{self.reward_name}"
        return {"before": summary["per_model"]["base"][key]["mean"],
                "after": summary["per_model"]["tuned"][key]["mean"], "step": self.step,
                "summary": summary}

    def _stop(self, signum: int, saved: bool) -> None:
        if not saved:
            self.save_checkpoint()
        message = (f"stopped by {signal.Signals(signum).name} at step {self.step} of "
                   f"{self.cfg.num_steps}; checkpoint saved in {self.last_checkpoint}. To resume, "
                   "run the same command again (resume=auto continues from the latest checkpoint).")
        if self.is_main:
            print(message, file=sys.stderr, flush=True)
        self.accelerator.end_training()
        raise Interrupted(signum, message)

    def only_val(self) -> dict:
        """Evaluate the LoRA at `lora_path` against its base (or the base model alone) and write
        the report under only_val/<checkpoint>/."""
        name = Path(self.cfg.lora_path).name if self.cfg.lora_path else "base"
        models = ("base", "tuned") if self.cfg.lora_path else ("base",)
        summary = self.evaluate(self.run_dir / "only_val" / name, models=models,
                                title=f"{self.run_dir.name}: {name}")
        if self.is_main:
            print(headline(summary))
            print(f"gallery: {self.run_dir / 'only_val' / name / 'index.html'}")
        return summary
