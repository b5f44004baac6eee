"""Reward-gradient fine-tuning (VADER): sample with the differentiable sampler, decode the frames
the reward asks for, score them, and backpropagate into the LoRA weights through the last steps.

Everything random in a step (prompt order, noise, cutoff, frame choice) is derived from the seed
and the step number, so a resumed run continues exactly where an uninterrupted one would be, and
N processes on a global batch match one process on the same batch.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import random
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from vader import checkpoint as ckpt
from vader.config import TrainConfig
from vader.eval_stats import pixel_embedding
from vader.evaluation import Embedder, VideoSpec, evaluate, headline, set_lora_dropout
from vader.frames import check_frames, frames_to_decode, score
from vader.guards import Interrupted, NonFiniteGuard, StopSignals, check_lora_fits, update
from vader.loss import reward_loss
from vader.prompts import PromptSource
from vader.protocols import Backbone, Reward, info_numbers
from vader.sampler import check_backprop, cutoff_index, dead_steps, make_noise, sample
from vader.seeds import TRAIN, generator_seed
from vader.tracking import MetricsLog, check_logger, plot_rewards, tracker_kwargs
from vader.video import SUPPORTED_SUFFIXES


def check_settings(cfg: TrainConfig) -> None:
    """Everything about the numbers that can be checked before a model is built."""
    check_backprop(cfg.backprop_mode, cfg.num_inference_steps, cfg.backprop_steps, cfg.backprop_step)
    check_logger(cfg.logger)
    positive = ("num_steps", "train_batch_size", "gradient_accumulation_steps", "val_batch_size",
                "num_val_seeds", "num_frames", "height", "width", "fps", "val_every",
                "checkpoint_every", "max_nonfinite_in_a_row")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if f".{cfg.video_format}" not in SUPPORTED_SUFFIXES:
        raise ValueError(f"video_format={cfg.video_format!r}: choose one of "
                         f"{[s[1:] for s in SUPPORTED_SUFFIXES]}")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision={cfg.mixed_precision!r}: choose no, fp16 or bf16")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision=fp16 needs a GPU; use mixed_precision=bf16 or no on a CPU")
    if cfg.lora_path is not None:
        ckpt.resolve_lora_path(cfg.lora_path)  # fails now, not after the models are loaded
    if cfg.keep_checkpoints < 0:
        raise ValueError(f"keep_checkpoints={cfg.keep_checkpoints}: use 0 (keep all) or a positive number")
    if ckpt.resume_mode(cfg.resume) == "path":
        ckpt.resolve_lora_path(cfg.resume)


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    # cpu=True when there is no GPU lets `accelerate launch --multi_gpu` run gloo processes on a
    # CPU, which is how the distributed tests run.
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                       **tracker_kwargs(cfg.logger, run_dir))


class RewardTrainer:
    """setup -> train -> (evaluate, save_checkpoint). Built objects in, files in `run_dir` out."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone, reward: Reward, prompts: PromptSource,
                 run_dir: Path | str, accelerator: Accelerator | None = None,
                 reward_name: str = "reward", eval_rewards: dict[str, Reward] | None = None,
                 embed: Embedder = pixel_embedding):
        check_settings(cfg)
        backbone.check_video(cfg.num_frames, cfg.height, cfg.width)
        check_frames(reward.frames, cfg.num_frames)
        if not reward.differentiable and not cfg.only_val:
            raise ValueError(f"reward {type(reward).__name__} is not differentiable, so reward-"
                             "gradient training cannot use it; evaluate with only_val=True")
        if hasattr(reward, "loss") and (cfg.loss.target is not None or cfg.loss.grad_scale != 1):
            raise ValueError(f"{type(reward).__name__} shapes its own loss per part; set target and "
                             "grad_scale in reward_fn.parts.<name> instead of loss.target/loss.grad_scale")
        self.cfg, self.backbone, self.reward, self.prompts = cfg, backbone, reward, prompts
        # The training reward first: evaluation reports it, then the others (generalisation).
        self.rewards = {reward_name: reward, **{k: v for k, v in (eval_rewards or {}).items()
                                                 if k != reward_name}}
        self.reward_name, self.embed = reward_name, embed
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
        self.dead_steps = dead_steps(backbone.make_scheduler, cfg.num_inference_steps)
        if (cfg.backprop_mode == "specific" and not cfg.only_val
                and set(range(cfg.backprop_step, cfg.num_inference_steps)) <= self.dead_steps):
            raise ValueError(
                f"backprop_step={cfg.backprop_step}: from there on no step of this schedule "
                f"depends on the model output (steps {sorted(self.dead_steps)} end at t=0), so "
                "LoRA would get no gradient; choose an earlier backprop_step")
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator or make_accelerator(cfg, self.run_dir)
        self.is_main = self.accelerator.is_main_process
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.is_main)
        self.spec = VideoSpec(cfg.num_frames, cfg.height, cfg.width, cfg.num_inference_steps,
                              cfg.guidance_scale, cfg.eta, cfg.batch_cfg)
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
        # The sampler calls the module accelerate returns (DDP when several processes run), so
        # gradients are averaged across processes; calling the bare module would train N LoRAs.
        self.model, self.optimizer = acc.prepare(module, self.optimizer)
        mode = ckpt.resume_mode(cfg.resume)
        if mode == "path":
            folder = ckpt.resolve_lora_path(cfg.resume).parent
        else:
            folder = ckpt.latest_checkpoint(self.run_dir / "checkpoints") if mode == "auto" else None
        if folder is not None and not cfg.only_val:
            self._resume(folder)
        if cfg.logger != "none":
            acc.init_trackers("vader", config={k: v for k, v in vars(cfg).items()
                                               if isinstance(v, (int, float, str, bool))})

    def _load_lora(self, path: Path | str) -> None:
        file = ckpt.resolve_lora_path(path)
        check_lora_fits(ckpt.read_lora_metadata(file), self.backbone.lora_metadata(),
                        self.backbone.name, file)
        self.backbone.load_lora_state_dict(ckpt.load_lora(file))

    def _resume(self, folder: Path) -> None:
        state = ckpt.load_training_state(folder)  # first: an unreadable state loads nothing
        self._load_lora(folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        self.nonfinite.load_state_dict(state.get("nonfinite", {}))  # absent from older checkpoints
        if self.accelerator.scaler is not None and "scaler" in state:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        # The final evaluation is the one at num_steps, and it runs again; a periodic one does not.
        self.metrics.truncate(self.step, keep_val_at_step=self.step < self.cfg.num_steps)
        self.last_checkpoint = folder
        self.accelerator.print(f"resumed from {folder} at step {self.step}")

    # --- data: a pure function of (seed, step, micro-step, rank) ---------------------------
    def batch(self, step: int, micro: int) -> tuple[list[str], list[int]]:
        cfg, acc = self.cfg, self.accelerator
        per_micro = cfg.train_batch_size * acc.num_processes
        first = (step * cfg.gradient_accumulation_steps + micro) * per_micro
        first += acc.process_index * cfg.train_batch_size
        train = self.prompts.train
        prompts, seeds = [], []
        for g in range(first, first + cfg.train_batch_size):
            epoch, pos = divmod(g, len(train))
            prompts.append(train[self._epoch_order(epoch)[pos]])
            seeds.append(generator_seed(TRAIN, cfg.seed, g))
        return prompts, seeds

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one trainer per process; two epochs in play
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts.train)))
        random.Random(self.cfg.seed * 100_003 + epoch).shuffle(order)
        return order

    # --- training --------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        start = time.perf_counter()
        losses, rewards, infos = [], [], []
        grad_norm, skipped = torch.full((1,), float("nan"), device=acc.device), None
        # Non-finite losses or rewards seen in this step's micro-steps, counted on the device so
        # the check costs no synchronisation until the one all-reduce that decides the update.
        non_finite = torch.zeros((), device=acc.device)
        set_lora_dropout(self.model, True)  # backbone.lora_dropout; evaluation switches it off
        for micro in range(cfg.gradient_accumulation_steps):
            rng = random.Random(f"{cfg.seed}-{self.step}-{micro}")
            prompts, seeds = self.batch(self.step, micro)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, values, info = self.forward_loss(prompts, seeds, rng)
                infos.append(info_numbers(info))  # tensors: read once, after the step
                acc.backward(loss)
                non_finite += (~torch.isfinite(loss.detach())).float() \
                    + (~torch.isfinite(values.detach())).any().float()
                if acc.sync_gradients:
                    if cfg.max_grad_norm > 0:
                        norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    else:
                        acc.unscale_gradients()  # fp16: the true norm, and the scaler's inf check
                        norm = torch.norm(torch.stack(
                            [p.grad.norm() for p in self.params if p.grad is not None]))
                    # Clipping has scaled NaN gradients by NaN; a skipped update discards them.
                    skipped = update(acc, self.optimizer, non_finite, norm)
                    if not skipped:
                        grad_norm = norm.detach().float().reshape(1)
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            rewards.append(values.detach().float().mean())
        if not skipped:
            self.lr_schedule.step()
        # Averages over all processes, so the log shows the global batch: one all-reduce for
        # every logged number rather than one per number, and one copy to the host. The
        # gradient norm, the same on every process, joins after the reduce, unaveraged.
        keys = list(infos[0])
        numbers = [torch.as_tensor(i[k], device=acc.device).float().reshape(())
                   for i in infos for k in keys]
        info_local = (torch.stack(numbers).view(len(infos), len(keys)).mean(0) if numbers
                      else torch.zeros(0, device=acc.device))
        local = torch.cat([torch.stack([torch.stack(losses).mean(), torch.stack(rewards).mean()]),
                           info_local])
        logged = torch.cat([acc.reduce(local, "mean"), grad_norm.to(local.device)])
        loss_mean, reward_mean, *info_means, grad_norm = logged.tolist()
        info = dict(zip(keys, info_means))
        self.step += 1
        self.nonfinite.record(skipped, self.step, "loss, reward or gradient", self.last_checkpoint)
        return {"split": "train", "step": self.step, "loss": loss_mean, "reward": reward_mean,
                "grad_norm": grad_norm, "lr": self.lr_schedule.get_last_lr()[0],
                "seconds": time.perf_counter() - start, "skipped": bool(skipped),
                "nonfinite_updates": self.nonfinite.total,
                **({"overflow_updates": self.nonfinite.overflows,
                    "loss_scale": acc.scaler.get_scale()} if acc.scaler is not None else {}),
                **{f"reward_info/{k}": v for k, v in info.items()}}

    def forward_loss(self, prompts: list[str], seeds: list[int],
                     rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One micro-step up to the loss: noise from the seeds, the truncated sampler, decode of
        the frames the reward scores, reward, loss. Autocast is the caller's; tests call this to
        compare the gradients of each speed/memory switch on and off."""
        cfg = self.cfg
        noise = make_noise(self.backbone.latent_shape(len(prompts), cfg.num_frames, cfg.height,
                                                      cfg.width), seeds, self.accelerator.device)
        cutoff = cutoff_index(cfg.backprop_mode, cfg.num_inference_steps, cfg.backprop_steps,
                              cfg.backprop_step, rng, self.dead_steps)
        # Offloading moves what autograd saves for backward to host memory (pinned, on a GPU);
        # inside checkpointed regions checkpoint's own hooks win, so it matters most without.
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
                   if cfg.offload_activations else contextlib.nullcontext())
        with offload:
            latents = sample(self.backbone, self.model, prompts, noise,
                             num_inference_steps=cfg.num_inference_steps,
                             guidance_scale=cfg.guidance_scale, cutoff=cutoff, eta=cfg.eta,
                             step_seeds=seeds, gradient_checkpointing=cfg.gradient_checkpointing,
                             batch_cfg=cfg.batch_cfg,
                             compile_no_grad_steps=cfg.compile_no_grad_steps)
            frames = self.backbone.decode(latents, frames_to_decode(self.reward,
                                                                    cfg.num_frames, rng))
            values, info = score(self.reward, frames, prompts, [rng] * len(prompts))
            if hasattr(self.reward, "loss"):  # a reward with its own shaping (composite)
                loss = self.reward.loss(values, info).mean()
            else:
                loss = reward_loss(values.float(), cfg.loss.target, cfg.loss.grad_scale).mean()
        return loss, values, info

    def evaluate(self, out_dir: Path | None, models: tuple[str, ...] = ("base", "tuned"),
                 rewards: dict[str, Reward] | None = None, gallery: bool = True,
                 title: str = "", on_summary=None) -> dict:
        cfg = self.cfg
        seeds = [cfg.val_seed + i for i in range(cfg.num_val_seeds)]
        model = self.accelerator.unwrap_model(self.model)
        return evaluate(self.backbone, model, rewards or self.rewards, self.prompts.val, seeds,
                        self.spec, self.accelerator, cfg.val_batch_size, out_dir, models,
                        self.embed, cfg.fps, title=title, checkpoint=self._checkpoint_name(),
                        gallery=gallery, on_summary=on_summary, video_format=cfg.video_format)

    def _checkpoint_name(self) -> str | None:
        if self.cfg.only_val:
            return str(self.cfg.lora_path) if self.cfg.lora_path else None
        return ckpt.step_dir_name(self.step)

    def _log_val(self, summary: dict) -> None:
        value = summary["per_model"]["tuned"][f"reward/{self.reward_name}"]["mean"]
        self.metrics.write({"split": "val", "step": self.step, "val_reward": value})
        self.accelerator.log({"val/reward": value}, step=self.step)

    def _periodic_evaluation(self) -> None:
        """The tuned model on the training reward only: a cheap point on the reward curve."""
        self.evaluate(self.run_dir / "eval" / ckpt.step_dir_name(self.step), models=("tuned",),
                      rewards={self.reward_name: self.reward}, gallery=False,
                      on_summary=self._log_val)

    def final_evaluation(self) -> dict:
        """Base against tuned on every evaluation reward, written to eval/ with the gallery."""
        def log(summary: dict) -> None:
            self._log_val(summary)
            if self.is_main:
                plot_rewards(self.metrics.read(),
                             self.run_dir / "eval" / "plots" / "reward_over_steps.png",
                             base=summary["per_model"]["base"][f"reward/{self.reward_name}"]["mean"])
        title = f"{self.run_dir.name}: trained on {self.reward_name}, step {self.step}"
        return self.evaluate(self.run_dir / "eval", title=title, on_summary=log)

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint (main process). A write that fails (a full disk) stops
        every process with the main one's message; earlier checkpoints stay as they were."""
        acc = self.accelerator

        def write() -> Path:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "lr_schedule": self.lr_schedule.state_dict(), "seed": self.cfg.seed,
                     "torch_rng": torch.get_rng_state(), "nonfinite": self.nonfinite.state_dict()}
            if acc.scaler is not None:  # fp16: the loss scale it has found, and its growth count
                state["scaler"] = acc.scaler.state_dict()
            return ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step,
                                        self.backbone.lora_state_dict(), state,
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
                self.metrics.write(record)
                acc.log({k: v for k, v in record.items() if k not in ("split", "step")},
                        step=self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", reward=f"{record['reward']:.4f}",
                                skipped=self.nonfinite.total)
                saved = self.step % cfg.checkpoint_every == 0 or self.step == cfg.num_steps
                if saved:
                    self.save_checkpoint()
                stopping = self._stop_requested(stop)
                if not stopping and self.step % cfg.val_every == 0 and self.step < cfg.num_steps:
                    self._periodic_evaluation()
                    # A signal during the evaluation stops here, not after one more step.
                    stopping = self._stop_requested(stop)
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

    def _stop_requested(self, stop: StopSignals) -> bool:
        # Any process may be the one signalled; all of them must stop at the same step.
        flag = torch.tensor([float(stop.signum or 0)], device=self.accelerator.device)
        signum = int(self.accelerator.reduce(flag, "max").item())
        stop.signum = signum or None
        return bool(signum)

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
