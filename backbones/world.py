"""`backbone=world`: the tiny ModelScope-architecture model (backbones/tiny.py's sizes)
pretrained on the shapes world (vader/world), with a word-level tokenizer over the world's
vocabulary. Its weights ship in `backbones/weights/world/` (made by `python -m vader.world
pretrain`, see docs/world.md), so the default job, the tests and the efficacy benchmark start
from a model that already draws coloured shapes that move, without a download.

The folder holds `model.safetensors` (every part: `unet.*`, `vae.*`, `text_encoder.*`) and
`config.json` (sizes, the VAE's latent scaling factor, the vocabulary, and how it was made).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from backbones.tiny import SCHEDULER_CONFIG, tiny_text_encoder, tiny_unet3d, tiny_vae
from backbones.video_unet import VideoUNetBackbone, check_attention, check_scheduler

SHIPPED = Path(__file__).resolve().parent / "weights" / "world"
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


class WorldTokenizer(PreTrainedTokenizerFast):
    """The world model's tokenizer: it refuses a prompt with a word the model never learned,
    instead of quietly reading it as `<unk>` (a world model asked for "a purple circle" would
    otherwise draw some circle and the run would look fine)."""

    def __call__(self, text, *args, **kwargs):
        for prompt in [text] if isinstance(text, str) else text:
            self.check(prompt)
        return super().__call__(text, *args, **kwargs)

    def check(self, prompt: str) -> None:
        backend = self.backend_tokenizer
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(prompt))]
        vocab = self.get_vocab()
        unknown = [w for w in words if w not in vocab]
        if unknown:
            known = sorted(w for w in vocab if w not in SPECIALS)
            raise ValueError(
                f"backbone=world does not know {unknown} in prompt {prompt!r}: it learned only the "
                f"shapes world's {len(known)} words {known}, in prompts like 'a red circle moves left "
                "on a blue background' (vader/world/grammar.py). Use prompt_fn=world, or a real "
                "backbone (backbone=modelscope, ...) for other prompts")


def word_tokenizer(words: list[str], max_length: int) -> WorldTokenizer:
    """One token per known word (lower-cased, split on whitespace and punctuation) between
    `<bos>` and `<eos>`; a prompt with any other word is refused (WorldTokenizer). Built in
    memory with Hugging Face `tokenizers`; a world prompt is ten words, so the text encoder
    learns words, not spellings."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    return WorldTokenizer(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                          pad_token="<pad>", unk_token="<unk>", model_max_length=max_length)


def build_parts(config: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The untrained parts `config` describes (sizes, vocabulary), seeded like backbones/tiny.py."""
    tokenizer = word_tokenizer(config["vocabulary"], config["max_prompt_tokens"])
    vae = tiny_vae(seed + 2, tuple(config["vae_channels"]))
    vae.register_to_config(scaling_factor=config.get("scaling_factor", 1.0))
    return {"unet": tiny_unet3d(seed + 1, tuple(config["channels"]), config["text_dim"]), "vae": vae,
            "text_encoder": tiny_text_encoder(seed, tokenizer, config["text_dim"]), "tokenizer": tokenizer}


def save_parts(states: dict[str, dict[str, torch.Tensor]], config: dict[str, Any],
               folder: Path) -> None:
    """Write `model.safetensors` from the state dicts of "unet", "vae" and "text_encoder" (in
    float16: half the size; what is measured is what ships) and `config.json` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"{name}.{k}": v.detach().to(torch.float16).contiguous()
             for name in ("unet", "vae", "text_encoder") for k, v in states[name].items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_parts(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    folder = Path(folder).expanduser()
    files = [folder / "config.json", folder / "model.safetensors"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"backbone.weights={str(folder)!r}: missing {missing}. The shipped world model lives in "
            f"{SHIPPED}; make one with `python -m vader.world pretrain --out <folder>` "
            "(docs/world.md)")
    config = json.loads(files[0].read_text())
    parts = build_parts(config)
    state = load_file(str(files[1]))
    for name in ("unet", "vae", "text_encoder"):
        prefix = f"{name}."
        own = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        parts[name].load_state_dict(own, strict=True)
    return parts, config


def world(weights: str | None = None, scheduler: str = "ddim", lora_rank: int = 8,
          lora_alpha: float | None = None, lora_target_modules: list[str] | None = None,
          lora_dropout: float = 0.0, gradient_checkpointing: bool = True,
          attention: str = "sdpa", checkpoint_blocks: bool = False) -> VideoUNetBackbone:
    """The pretrained world model from `weights` (a folder; null: the one shipped here)."""
    check_scheduler(scheduler)
    check_attention(attention)
    parts, config = load_parts(weights or SHIPPED)
    return VideoUNetBackbone(
        name="world", **parts, scheduler_config=SCHEDULER_CONFIG, scheduler=scheduler,
        scheduler_overrides={"prediction_type": config.get("prediction_type", "epsilon")},
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=lora_target_modules,
        lora_dropout=lora_dropout, gradient_checkpointing=gradient_checkpointing,
        attention=attention, checkpoint_blocks=checkpoint_blocks)
