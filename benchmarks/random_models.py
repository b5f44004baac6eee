"""The reward models at their published sizes with random weights, saved in the hub layouts the
rewards load (config.json, model.safetensors, the processor and tokenizer files they read), for
benchmarks/temporal_reward_speed.py: the published checkpoints cannot be downloaded where this
project is built, and a model's cost does not depend on its weights' values.

Each model is built from its transformers config class with the published hyperparameters (the
numbers are the checkpoints' config.json; where a config class's default already is the checkpoint
that is said), seeded, and saved once under `root` the first time a reward asks for it.
Tokenizers are built in memory: BERT's (BLIP, MiniLM) with a vocabulary of bert-base-uncased's
size and special-token ids whose words are the prompt's plus made-up ones, so prompts and captions
tokenise to as many tokens as real words would (one per word); CLIP's is the byte-level one of
`backbone=tiny` (backbones/tiny.py), one token per character, so a prompt is about four times as
many tokens as with CLIP's real BPE. The text towers see only the prompt, under 1% of the image
towers' cost at these sizes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

PROMPT = "a man riding a bike down the street"   # the benchmark's prompt; its words are in BERT's vocabulary
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
BERT_VOCAB_SIZE = 30522  # bert-base-uncased, which BLIP (plus [DEC], [ENC]) and all-MiniLM-L6-v2 use

# facebook/dinov2-small's preprocessor_config.json (BitImageProcessor).
DINOV2_PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True,
                    "size": {"shortest_edge": 256}, "resample": 3, "do_center_crop": True,
                    "crop_size": {"height": 224, "width": 224}, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
                    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
# openai/clip-vit-base-patch32's and -large-patch14's (the legacy form; as tests/tiny_clip.py).
CLIP_PROCESSOR = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                  "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN,
                  "image_std": OPENAI_STD, "resample": 3, "size": 224}


def bert_vocab() -> dict[str, int]:
    """bert-base-uncased's size and special ids ([PAD] 0, [unused*] 1-99, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103), the prompt's words, then made-up words."""
    special = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = list(dict.fromkeys(PROMPT.split()))
    tokens = special + words + [f"word{i}" for i in range(BERT_VOCAB_SIZE - len(special) - len(words))]
    return {token: i for i, token in enumerate(tokens)}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dinov2_small(folder: Path) -> int:
    from transformers import Dinov2Config, Dinov2Model
    model = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                     mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0))
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR, indent=2))
    return params(model)


def dino_vitb16(folder: Path) -> int:
    """ViTConfig's defaults are ViT-B/16 at 224: 768 wide, 12 layers, 12 heads, MLP 3072. No
    pooler, as subject_consistency loads it; it reads no processor file."""
    from transformers import ViTConfig, ViTModel
    model = ViTModel(ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, patch_size=16, image_size=224),
                     add_pooling_layer=False)
    model.save_pretrained(folder)
    return params(model)


def clip(folder: Path, text: dict, vision: dict, projection_dim: int) -> int:
    from transformers import CLIPConfig, CLIPModel

    from backbones.tiny import byte_level_tokenizer
    tokenizer = byte_level_tokenizer(77)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", **ids, **text),
        vision_config=dict(image_size=224, hidden_act="quick_gelu", **vision),
        projection_dim=projection_dim))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PROCESSOR, indent=2))
    return params(model)


def clip_vit_b32(folder: Path) -> int:
    """openai/clip-vit-base-patch32 (CLIPConfig's defaults)."""
    return clip(folder, dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     patch_size=32), projection_dim=512)


def clip_vit_l14(folder: Path) -> int:
    """openai/clip-vit-large-patch14."""
    return clip(folder, dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     patch_size=14), projection_dim=768)


def blip_base(folder: Path) -> int:
    """Salesforce/blip-image-captioning-base: BlipConfig's defaults (ViT-B/16 at 384, a 12-layer
    768-wide BERT decoder over 30524 tokens) but for the decoder's heads, 12 in the checkpoint
    (8 by default: the same FLOPs). 224.0M parameters; the hub's 247M counts the decoder's output
    layer, tied to its word embeddings, twice. Saved with its BlipProcessor: 384 x 384 bicubic,
    CLIP's mean and std (BlipImageProcessor's defaults), over BERT's tokenizer plus [DEC], [ENC]."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)
    model = BlipForConditionalGeneration(BlipConfig(text_config=dict(num_attention_heads=12)))
    model.save_pretrained(folder)
    vocab = bert_vocab()
    vocab.update({"[DEC]": len(vocab), "[ENC]": len(vocab) + 1})
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    processor = BlipImageProcessor(size={"height": 384, "width": 384}, resample=3,
                                   image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    BlipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return params(model)


def minilm_l6(folder: Path) -> int:
    """sentence-transformers/all-MiniLM-L6-v2: a BERT 384 wide, 6 layers, 12 heads, MLP 1536, mean
    pooling, normalisation, 256 tokens at most."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer
    bert = folder / "bert"
    model = BertModel(BertConfig(vocab_size=BERT_VOCAB_SIZE, hidden_size=384, num_hidden_layers=6,
                                 num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512))
    model.save_pretrained(bert)
    BertTokenizer(vocab=bert_vocab()).save_pretrained(bert)
    encoder = Transformer(str(bert), max_seq_length=256)
    SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension(), "mean"),
                                 Normalize()]).save(str(folder))
    return params(model)


def vbench_aesthetic_head(folder: Path) -> int:
    """LAION's sa_0_4_vit_l_14_linear.pth: a state dict of nn.Linear(768, 1)."""
    head = torch.nn.Linear(768, 1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / "sa_0_4_vit_l_14_linear.pth")
    return params(head)


@dataclass(frozen=True)
class Spec:
    label: str                       # what the benchmark's table says
    build: Callable[[Path], int]     # writes the folder, returns the parameter count


MODELS = {
    "dinov2-small": Spec("DINOv2 ViT-S/14", dinov2_small),
    "dino-vitb16": Spec("DINO ViT-B/16", dino_vitb16),
    "clip-vit-b32": Spec("CLIP ViT-B/32", clip_vit_b32),
    "clip-vit-l14": Spec("CLIP ViT-L/14", clip_vit_l14),
    "blip-base": Spec("BLIP base captioner", blip_base),
    "minilm-l6": Spec("MiniLM-L6", minilm_l6),
    "vbench-aesthetic-head": Spec("LAION linear head", vbench_aesthetic_head),
}


class RandomModels:
    """`models(name)` -> the folder of MODELS[name] under `root`, built on first use (seeded)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.built: dict[str, tuple[Path, int, float]] = {}   # name -> folder, parameters, seconds

    def __call__(self, name: str) -> str:
        if name not in self.built:
            import time
            start = time.perf_counter()
            torch.manual_seed(0)
            folder = self.root / name
            count = MODELS[name].build(folder)
            self.built[name] = (folder, count, time.perf_counter() - start)
        return str(self.built[name][0])

    def label(self, name: str) -> str:
        """E.g. 'DINOv2 ViT-S/14 (22.1M)': with the parameter count once built."""
        if name not in self.built:
            return MODELS[name].label
        count = self.built[name][1]
        return f"{MODELS[name].label} ({count / 1e6:.1f}M)" if count >= 1e5 else \
            f"{MODELS[name].label} ({count} weights)"
