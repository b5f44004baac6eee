"""The config schema: a typed top level (so `lrr=1` or `lr=abc` fails while composing) and a
check of every `_target_` node against its target's signature (so `reward_fn.gard_scale=0.1`
fails right after composing, naming the key, before any model is built).

Group options stay one YAML + one Python module: their schema *is* the target's signature, and
`check_targets` reads it without importing anything heavy the target builds.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class LossConfig:
    target: float | None = None   # None: maximise the reward; a number: minimise |reward - target|
    grad_scale: float = 1.0       # multiplies the loss (VADER's reward scaling)


@dataclass
class DataConfig:
    """How training videos become samples (SFT, DPO): docs/data.md."""
    frame_stride: int = 1           # take every n-th native frame (ignored when fps is set)
    fps: float | None = None        # or: sample the video at this frame rate
    window: str = "random"          # random (a start drawn per clip) | central
    short_videos: str = "skip"      # fewer frames than needed: skip | loop | pad
    num_workers: int = 2            # DataLoader processes decoding and resizing (0: in the trainer)
    cache: bool = True              # keep each clip's latents and each caption's embedding on disk
    cache_dir: str | None = None    # null: <run dir>/cache; a shared folder reuses them across runs


@dataclass
class MotionGuardConfig:
    """The motion floor added to rewards a still video maximises (rewards/motion_floor.py)."""
    enabled: str = "auto"           # auto: when the reward declares it | true | false
    margin: float = 0.3             # motion below (1 - margin) x the base model's is penalised
    weight: float = 1.0             # penalty per unit of motion lost below the floor, relative to the base's
    measure: str = "frame_difference"  # frame_difference (has gradients) | flow (mean flow magnitude; GRPO)
    reference: float | None = None  # the base model's motion; null: measured before training
    reference_videos: int = 4       # base-model videos of training prompts it is measured on
    flow: str = "farneback"         # measure=flow: farneback | raft_small | raft_large
    flow_weights: str = "default"   # RAFT's weights (rewards/flow.py)
    num_flow_updates: int = 12      # RAFT's refinement iterations


@dataclass
class LongConfig:
    """Videos longer than the backbone's window (vader/sampling/windows.py, docs/long_video.md)."""
    window: int | None = None       # latent frames per window; null: the whole video at once
    overlap: int = 0                # latent frames neighbouring windows share
    fusion: str = "triangular"      # how shared frames' predictions are averaged: triangular | uniform | none
    keyframe_interval: int | None = None  # keyframes every n latent frames, then the frames between; null: one pass
    keyframe_guidance: float | None = None  # the keyframes' guidance; null: guidance_scale
    inbetween_guidance: float = 3.0  # the frames between keyframes


@dataclass
class CurriculumConfig:
    """Stages of increasing length, each left when its gates pass (vader/loop/curriculum.py)."""
    lengths: list[int] = field(default_factory=list)  # num_frames of each stage; []: no curriculum
    gate: dict[str, Any] = field(default_factory=dict)  # metric: minimum (a number or ">=x"), or "<=x"
    steps_per_stage: int = 20       # a held-out evaluation checks the gates every this many steps of a stage
    max_steps_per_stage: int | None = None  # advance anyway after this many (logged); null: wait for the gates


@dataclass
class FVDConfig:
    """FVD against real videos in every final evaluation (vader/evaluation/fvd.py)."""
    reference: str | None = None    # real videos: a folder of them or a manifest table; null: no FVD
    extractor: str = "i3d"          # i3d (the FVD literature's Kinetics-400 I3D) | tiny (random: tests)
    weights: str = "default"        # i3d: default (torch hub cache, else download) | the file's path
    cache: str | None = None        # reference statistics file; null: <run dir>/fvd_reference.pt


@dataclass
class TrainConfig:
    algorithm: Any = MISSING
    backbone: Any = MISSING
    reward_fn: Any = MISSING
    prompt_fn: Any = MISSING
    dataset: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    motion_guard: MotionGuardConfig = field(default_factory=MotionGuardConfig)
    seed: int = 0
    num_steps: int = 40
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.0
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_target_modules: list[str] | None = None
    lora_dropout: float = 0.0
    num_frames: int = 8
    height: int = 32
    width: int = 32
    num_inference_steps: int = 10
    guidance_scale: float = 7.5
    eta: float = 0.0
    backprop_mode: str = "last"
    backprop_steps: int = 1
    backprop_step: int | None = None
    gradient_checkpointing: bool = True
    mixed_precision: str = "no"
    batch_cfg: bool = True
    compile_no_grad_steps: bool = False
    offload_activations: bool = False
    val_every: int = 20
    val_batch_size: int = 2
    num_val_seeds: int = 2
    val_seed: int = 1234
    checkpoint_every: int = 20
    resume: str = "auto"
    keep_checkpoints: int = 3
    max_nonfinite_in_a_row: int = 5
    only_val: bool = False
    lora_path: str | None = None
    logger: str = "none"
    video_format: str = "mp4"
    fps: int = 8
    eval_rewards: list[str] = field(default_factory=list)
    eval_reward_args: dict[str, Any] = field(default_factory=dict)
    eval_embedding: str = "pixels"
    eval_metrics: list[str] = field(default_factory=list)
    fvd: FVDConfig = field(default_factory=FVDConfig)
    long: LongConfig = field(default_factory=LongConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    run_name: str = MISSING


def register_configs() -> None:
    """Called once by train.py (and by tests) before Hydra composes."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("vader_run_name"):
        # The run directory comes from the overrides, never from a clock: every process of an
        # `accelerate launch` resolves it on its own and they must agree.
        OmegaConf.register_new_resolver(
            "vader_run_name", lambda overrides: overrides.replace("/", "_") or "default")


def _target_params(target: str) -> tuple[dict[str, inspect.Parameter], bool]:
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"_target_ {target!r} cannot be imported: {err}") from err
    params = inspect.signature(obj).parameters
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: p for k, p in params.items() if p.kind is not p.VAR_KEYWORD}, has_kwargs


def check_targets(cfg: DictConfig | ListConfig, path: str = "") -> None:
    """Raise ValueError naming the first key that the target it is passed to does not take, or
    a required argument left out. Interpolations are not resolved here."""
    if cfg._is_none() or cfg._is_missing():
        return
    if isinstance(cfg, ListConfig):
        for i, item in enumerate(cfg):
            if isinstance(item, (DictConfig, ListConfig)):
                check_targets(item, f"{path}[{i}]")
        return
    if "_target_" in cfg:
        params, has_kwargs = _target_params(cfg._target_)
        keys = [k for k in cfg.keys() if not str(k).startswith("_")]
        for key in keys:
            if key not in params and not has_kwargs:
                raise ValueError(
                    f"unknown key '{path}.{key}' (for {cfg._target_}); valid keys: "
                    f"{', '.join(sorted(params))}".replace("'.", "'"))
        for name, p in params.items():
            if p.default is p.empty and name not in keys and p.kind is not p.VAR_POSITIONAL:
                raise ValueError(f"'{path}.{name}' is required by {cfg._target_}; set it, e.g. "
                                 f"{path}.{name}=...".replace("'.", "'"))
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)):
            check_targets(node, f"{path}.{key}" if path else str(key))


# Named sets `eval_metrics` may hold: VBench's dimensions that need no prompt categories (Huang et
# al., CVPR 2024), imaging quality added where pyiqa (its MUSIQ) is installed; and the temporal
# monitors of docs/rewards.md (FVD joins them through `fvd.reference`).
METRIC_SETS = {
    "vbench": ["subject_consistency", "background_consistency", "dynamic_degree",
               "aesthetic_quality", "temporal_flickering"],
    "monitoring": ["t_lpips", "clip_vid", "seam", "identity_lock", "loop_break"],
}


def expand_metrics(names: list[str]) -> list[str]:
    """`eval_metrics` with its sets spelt out, each name once, in order."""
    import importlib.util
    out: list[str] = []
    for name in names:
        more = METRIC_SETS.get(name, [name])
        if name == "vbench" and importlib.util.find_spec("pyiqa") is not None:
            more = [*more, "imaging_quality"]
        out += [m for m in more if m not in out]
    return out


def eval_reward_configs(names: list[str], args: DictConfig | dict) -> dict[str, DictConfig]:
    """The reward_fn options named by `eval_rewards` and `eval_metrics`, composed from
    conf/reward_fn/ exactly as `reward_fn=<name>` would be, with `eval_reward_args.<name>` merged
    in; checked, not built."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    unknown = set(args or {}) - set(names)
    if unknown:
        raise ValueError(f"eval_reward_args names {sorted(unknown)}, which are not in "
                         f"eval_rewards or eval_metrics ({names}); add them there or remove the args")
    options = sorted(p.stem for p in (CONF_DIR / "reward_fn").glob("*.yaml"))
    for name in names:
        if name not in options:
            raise ValueError(f"eval_rewards / eval_metrics: no reward_fn option {name!r}; choose "
                             f"from {options} (or, in eval_metrics, {sorted(METRIC_SETS)})")
    if not names:
        return {}

    def one(name: str) -> DictConfig:
        node = compose(config_name="train", overrides=[f"reward_fn={name}"]).reward_fn
        OmegaConf.set_struct(node, False)  # unknown keys are check_targets' to report, by name
        node = OmegaConf.merge(node, (args or {}).get(name) or {})
        check_targets(node, f"eval_reward_args.{name}")
        return node

    if GlobalHydra.instance().is_initialized():  # inside train.py's @hydra.main
        return {name: one(name) for name in names}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return {name: one(name) for name in names}
