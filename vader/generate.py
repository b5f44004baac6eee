"""Generate videos with a trained LoRA (or the base model) and write them with a gallery, without
evaluating: the plain way to use what training made.

    python -m vader.generate lora_path=outputs/default/checkpoints/step_000040 \\
        'prompts=[a red circle moves left on a white background]'
    python -m vader.generate backbone=modelscope lora_path=lora.safetensors prompts=prompts.txt \\
        num_frames=48 long.window=16 long.overlap=4 seeds=2 out=videos/

Keys of its own: `prompts` (a list, or a text file with one prompt a line), `seeds` (videos per
prompt, default 1: the evaluation's seeds from `val_seed`, so a prompt that was evaluated gives the
same video), `out` (default `outputs/generate/<checkpoint name, or base>`). Every other key is
train.py's (conf/train.yaml): the backbone and its settings, `lora_path`, `num_frames`, `height`,
`width`, `num_inference_steps`, `guidance_scale`, `eta`, `long.*` (long videos in windows:
docs/long_video.md), `video_format`, `fps`, `val_batch_size`. Writes
`<out>/videos/NNN_<prompt>_seed<S>.<format>` and `<out>/index.html`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

OWN_KEYS = ("prompts", "seeds", "out")


def split_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Our own keys, and the rest as Hydra overrides of conf/train.yaml."""
    own, overrides = {}, []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in OWN_KEYS:
            own[key] = value
        else:
            overrides.append(arg)
    return own, overrides


def read_prompts(value: str | None) -> list[str]:
    """`[a, b]` (Hydra's list syntax) or a text file with one prompt a line."""
    if not value:
        raise ValueError("give prompts: 'prompts=[a red circle moves left on a white background]' "
                         "or prompts=<a text file with one prompt a line>")
    if value.startswith("["):
        import yaml  # a YAML flow list, as Hydra reads one: commas separate prompts
        prompts = [str(p) for p in yaml.safe_load(value) or []]
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"prompts={value!r}: no such file; give a text file with one "
                                    "prompt a line, or a list: 'prompts=[a cat, a dog]'")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"prompts={value!r} holds no prompt")
    return prompts


def main(argv: list[str] | None = None) -> Path:
    from accelerate import Accelerator
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vader.build import build
    from vader.config import CONF_DIR, check_targets, register_configs
    from vader.evaluation.evaluate import VideoSpec, _generate, settings, slug
    from vader.evaluation.gallery import write_gallery
    from vader.io.video import save_video
    from vader.loop import checkpoint as ckpt
    from vader.loop.guards import check_lora_fits
    from vader.loop.settings import check_settings

    own, overrides = split_args(sys.argv[1:] if argv is None else argv)
    prompts = read_prompts(own.get("prompts"))
    num_seeds = int(own.get("seeds", 1))
    if num_seeds < 1:
        raise ValueError(f"seeds={num_seeds}: generate at least one video per prompt")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    check_targets(cfg)  # a typo fails here, before any weights load
    s = OmegaConf.to_object(cfg)
    check_settings(s)  # windows longer than the video, keyframes in too short a one, ...
    lora = ckpt.resolve_lora_path(s.lora_path) if s.lora_path else None
    name = Path(s.lora_path).name if lora else "base"
    out = Path(own.get("out") or Path("outputs") / "generate" / name)

    backbone = build(cfg.backbone)
    backbone.check_video(s.num_frames, s.height, s.width)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=s.mixed_precision)
    backbone.to(accelerator.device)
    if lora is not None:
        check_lora_fits(ckpt.read_lora_metadata(lora), backbone.lora_metadata(), backbone.name, lora)
        backbone.load_lora_state_dict(ckpt.load_lora(lora))
    model = backbone.trainable_module()
    spec = VideoSpec.of(s)
    seeds = [s.val_seed + i for i in range(num_seeds)]
    items = [(i, p, seed) for i, p in enumerate(prompts) for seed in seeds]
    model_name = "tuned" if lora else "base"
    rows = []
    with torch.no_grad():
        for start in range(0, len(items), s.val_batch_size):
            chunk = items[start:start + s.val_batch_size]
            frames = _generate(backbone, model, [c[1] for c in chunk], [c[2] for c in chunk], spec,
                               accelerator)
            for (i, prompt, seed), video in zip(chunk, frames):
                rel = f"videos/{i:03d}_{slug(prompt)}_seed{seed}.{s.video_format}"
                save_video(video.cpu(), out / rel, fps=s.fps)
                rows.append({"prompt_index": i, "prompt": prompt, "seed": seed,
                             "model": model_name, "video": rel})
                print(out / rel)
    summary = {"title": f"generated: {name}", "checkpoint": str(lora) if lora else None,
               "models": [model_name], "rewards": [], "prompts": prompts, "seeds": seeds,
               "settings": settings(spec), "per_model": {}, "comparison": {}}
    page = write_gallery(out, rows, summary)
    print(f"gallery: {page}")
    return page


if __name__ == "__main__":
    main()
