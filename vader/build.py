"""From a composed config to built objects: the one place that knows both the schema
(vader.config) and the training loop (vader.loop), so neither imports the other."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vader.config import check_targets, eval_reward_configs, expand_metrics
from vader.loop.curriculum import Curriculum
from vader.loop.settings import check_settings, make_accelerator
from vader.loop.trainer import Trainer


def build_trainer(cfg: DictConfig, run_dir: str, reward_name: str | None = None) -> Trainer:
    """Check `cfg` completely, then build the objects it names into a Trainer. Every check that
    needs no model (the algorithm's own, given the number of processes, included) runs before
    anything is built or written. `reward_name` is the reward_fn option chosen (train.py passes
    Hydra's choice); by default the reward's module."""
    check_targets(cfg)
    metrics = expand_metrics(list(cfg.eval_metrics))
    reward_args = seam_args(cfg, metrics)
    eval_cfgs = eval_reward_configs([*cfg.eval_rewards, *(m for m in metrics if m not in cfg.eval_rewards)],
                                    reward_args)
    settings = OmegaConf.to_object(cfg)
    check_settings(settings)
    algorithm = build(cfg.algorithm)
    accelerator = make_accelerator(settings, Path(run_dir))
    if not settings.only_val:
        algorithm.check(settings, accelerator.num_processes)
        long = settings.long
        for key in ("window", "keyframe_interval"):
            if getattr(long, key) is not None and key not in getattr(algorithm, "long_videos", ()):
                raise ValueError(f"long.{key}={getattr(long, key)}: {type(algorithm).__name__} does not "
                                 f"train on videos made that way; set long.{key}=null, or choose an "
                                 "algorithm that does (docs/long_video.md). Evaluation and "
                                 "vader.generate take it with any algorithm")
    curriculum = None if settings.only_val else Curriculum.from_config(settings)
    if curriculum is not None:
        if getattr(algorithm, "data", None) is not None:
            raise ValueError(f"curriculum.lengths: {type(algorithm).__name__} learns from a dataset's "
                             "clips of num_frames; a length curriculum needs an algorithm that makes "
                             "its own videos (reward_grad, grpo). Set curriculum.lengths=[]")
        for n in curriculum.lengths:  # a stage shorter than a window fails now
            check_settings(replace(settings, num_frames=n))
    prompts = build(cfg.prompt_fn)     # cheap, and bad prompt files fail early
    data = None if settings.only_val else build_data(cfg, algorithm)
    # The backbone checks that every model part can be had before loading any of them, and
    # comes before the reward so a wrong path fails before any reward model loads.
    backbone = build(cfg.backbone)
    why = getattr(backbone, "no_windows", None)  # a backbone that cannot make videos in windows says why
    if why and (settings.long.window is not None or settings.long.keyframe_interval is not None):
        raise ValueError(f"long.window / long.keyframe_interval: backbone {backbone.name!r} cannot make "
                         f"videos in windows: {why}; set long.window=null long.keyframe_interval=null")
    if "seam" in eval_cfgs and "temporal" not in ((cfg.eval_reward_args or {}).get("seam") or {}):
        # windows count latent frames; the seam metric meets video frames (rewards/seam.py)
        eval_cfgs["seam"].temporal = getattr(backbone, "temporal", 1)
    reward_name = reward_name or cfg.reward_fn._target_.split(".")[-2]
    eval_rewards = {name: build(node) for name, node in eval_cfgs.items() if name != reward_name}
    reward = build(cfg.reward_fn)
    if getattr(algorithm, "needs_reward_gradient", False) and hasattr(reward, "differentiable_parts") \
            and not settings.only_val:
        reward = reward.differentiable_parts(accelerator.print)
    # An algorithm that learns from a dataset (SFT, offline DPO) uses the reward to evaluate only.
    reward = guard_reward(reward, reward_name, settings, accelerator.print,
                          trained=getattr(algorithm, "data", None) is None)
    return Trainer(settings, algorithm, backbone, reward, prompts, run_dir,
                   accelerator, reward_name=reward_name, eval_rewards=eval_rewards,
                   embed=make_embedder(settings.eval_embedding), data=data,
                   metrics=[m for m in metrics if m != reward_name],
                   set_metrics=make_set_metrics(settings, Path(run_dir), accelerator),
                   curriculum=curriculum)


def seam_args(cfg: DictConfig, metrics: list[str]) -> DictConfig:
    """`eval_reward_args`, and, for videos made in windows (`long.window`), the seam metric
    added to `metrics` (in place) at the windows' boundaries: every evaluation then reports each
    video's seam score (docs/long_video.md). Farneback flow, as it needs no weights; keys the
    user gave under eval_reward_args.seam win."""
    args = OmegaConf.to_container(cfg.eval_reward_args, resolve=True) or {}
    if cfg.long.window is None:
        return OmegaConf.create(args)
    if "seam" not in metrics:
        metrics.append("seam")
    args["seam"] = {"window": cfg.long.window, "overlap": cfg.long.overlap, "flow": "farneback",
                    "one_window_scores_one": True, **(args.get("seam") or {})}
    return OmegaConf.create(args)


def guard_reward(reward: Any, name: str, settings: Any, say: Any = print, trained: bool = True) -> Any:
    """The training reward with the motion floor (rewards/motion_floor.py) when
    `motion_guard.enabled` asks for it: `auto` adds it to a reward a still video maximises.
    Evaluation-only runs, and algorithms that learn from data and only evaluate with the reward
    (`trained` False), get the reward as it is. `say` tells the log when
    such a reward trains without it (the trainer says when it is on, once it knows the floor)."""
    from rewards.motion_floor import MotionFloor, maximised_by_still_video

    guard = settings.motion_guard
    mode = str(guard.enabled).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"motion_guard.enabled={guard.enabled!r}: use auto, true or false")
    still = maximised_by_still_video(reward)
    if settings.only_val or not trained:
        return reward
    if mode == "false" or (mode == "auto" and not still):
        if still:
            say(f"motion guard off (motion_guard.enabled=false): {name} is maximised by a still "
                "video, and nothing keeps training from freezing it; the evaluation flags a run "
                "whose motion falls by more than 30%")
        return reward
    return MotionFloor(reward, margin=guard.margin, weight=guard.weight, measure=guard.measure,
                       reference=guard.reference, reference_videos=guard.reference_videos,
                       flow=guard.flow, flow_weights=guard.flow_weights,
                       num_flow_updates=guard.num_flow_updates)


def build_data(cfg: DictConfig, algorithm: Any) -> list | None:
    """The items of `cfg.dataset` (clips or preference pairs: vader.data.manifests), checked
    against what the algorithm learns from (its `data`), before any model loads."""
    from vader.data.manifests import Clip, Pair

    kind, name = getattr(algorithm, "data", None), type(algorithm).__name__
    if cfg.get("dataset") is None:
        if kind is not None:
            example = "dataset=folder dataset.path=clips/" if kind == "clips" else \
                "dataset=pairs dataset.path=pairs.csv"
            raise ValueError(f"{name} learns from {kind}: choose a dataset, e.g. {example} "
                             "(every format: docs/data.md)")
        return None
    if kind is None:
        raise ValueError(f"a dataset is set (dataset._target_={cfg.dataset.get('_target_')}), "
                         f"but {name} learns from its own samples and reads none; remove "
                         "dataset=..., or choose algorithm=sft (clips) or algorithm=dpo (pairs)")
    items = build(cfg.dataset)
    expected, other = (Clip, Pair) if kind == "clips" else (Pair, Clip)
    if not items:
        raise ValueError(f"the dataset ({cfg.dataset._target_}) lists no {kind}")
    if not isinstance(items[0], expected):
        fix = ("dataset=folder, manifest, webvid, msrvtt, activitynet or image_video" if kind == "clips"
               else "dataset=pairs, videodpo or pickapic")
        raise ValueError(f"{name} learns from {kind}, but {cfg.dataset._target_} lists "
                         f"{'clips' if isinstance(items[0], Clip) else 'pairs'}; use {fix}")
    return items


def make_set_metrics(settings: Any, run_dir: Path, accelerator: Any) -> dict[str, Any]:
    """FVD when `fvd.reference` names real videos (a folder of them, or a manifest table). Its
    reference statistics are computed now, before the backbone loads, so a bad folder fails first;
    the main process writes them to the cache, the others then read it."""
    from vader.data.manifests import folder, manifest
    from vader.evaluation.fvd import FVDMetric, reference_stats, video_features

    fvd = settings.fvd
    if fvd.reference is None:
        return {}
    path = Path(fvd.reference).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"fvd.reference={fvd.reference!r} does not exist: give a folder of "
                                "real videos or a manifest table with a `video` column")
    clips = folder(path) if path.is_dir() else manifest(path)
    extractor = video_features(fvd.extractor, fvd.weights, device=accelerator.device)
    cache = Path(fvd.cache).expanduser() if fvd.cache else run_dir / "fvd_reference.pt"
    stats = lambda: reference_stats(clips, extractor, settings.num_frames, settings.height,  # noqa: E731
                                    settings.width, fps=settings.fps, cache=cache)
    if accelerator.is_main_process:
        reference = stats()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        reference = stats()
    return {"fvd": FVDMetric(extractor, reference)}


def make_embedder(name: str):
    """The video embedding diversity is measured in: `pixels` (weight-free) or a CLIP model's
    hub id or folder (mean of its normalised frame embeddings)."""
    from vader.evaluation.stats import pixel_embedding

    if name == "pixels":
        return pixel_embedding
    from rewards.clip_hf import video_embedder
    return video_embedder(name)


def build(node: DictConfig) -> Any:
    """hydra.utils.instantiate, but our own errors (which say what to do) reach the user as they
    are instead of wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError, KeyError)):
            raise err.__cause__ from None
        raise
