"""A tiny random VideoCrafter2 checkpoint in the official LDM layout (`model.ckpt` with
`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.model.*` and the schedule
buffers), so tests run backbones/videocrafter2.py's real loading and conversion code.

The LDM names are written here from the official layout (docs/design/videocrafter2.md sections
3.4-3.5; tests/data/videocrafter2_keys.json holds the real list), independently of the converter:
a test loads the file and compares every weight with the model it was written from."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from backbones.tiny import SCHEDULER_CONFIG, byte_level_tokenizer, tiny_text_encoder, tiny_vae
from backbones.videocrafter2 import FpsUNet3DConditionModel

UNET_CONFIG = dict(block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                   attention_head_dim=8, norm_num_groups=8)
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet(rest: str) -> str:
    name, tail = rest.split(".", 1)
    return f"{RESNET[name]}.{tail}"


def ldm_unet(state: dict, layers: int) -> dict:
    """Our UNet's weights under VideoCrafter's openaimodel3d names."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("time_embedding", "fps_embedding"):
            name = {"time_embedding": "time_embed", "fps_embedding": "fps_embedding"}[parts[0]]
            ldm = f"{name}.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
        elif parts[0] in ("conv_in", "transformer_in", "conv_norm_out", "conv_out"):
            ldm = {"conv_in": "input_blocks.0.0", "transformer_in": "init_attn.0", "conv_norm_out": "out.0",
                   "conv_out": "out.2"}[parts[0]] + "." + ".".join(parts[1:])
            if parts[0] == "transformer_in" and parts[1] in ("proj_in", "proj_out") and parts[2] == "weight":
                value = value.unsqueeze(-1)  # VideoCrafter's 1x1 Conv1d
        elif parts[0] == "mid_block":
            kind, i, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            ldm = {"resnets": f"middle_block.{3 * i}.{_resnet(rest) if kind == 'resnets' else ''}",
                   "temp_convs": f"middle_block.{3 * i}.temopral_conv.{rest}",
                   "attentions": f"middle_block.1.{rest}", "temp_attentions": f"middle_block.2.{rest}"}[kind]
        else:
            level, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if parts[0] == "down_blocks":
                block = level * (layers + 1) + 1 + j
                ldm = {"resnets": f"input_blocks.{block}.0.{_resnet(rest) if kind == 'resnets' else ''}",
                       "temp_convs": f"input_blocks.{block}.0.temopral_conv.{rest}",
                       "attentions": f"input_blocks.{block}.1.{rest}",
                       "temp_attentions": f"input_blocks.{block}.2.{rest}",
                       "downsamplers": f"input_blocks.{level * (layers + 1) + layers + 1}.0.op.{rest[len('conv.'):]}"
                       }[kind]
            else:
                block = level * (layers + 1) + j  # layers + 1 blocks a level, the last upsampling
                last = level * (layers + 1) + layers
                has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
                ldm = {"resnets": f"output_blocks.{block}.0.{_resnet(rest) if kind == 'resnets' else ''}",
                       "temp_convs": f"output_blocks.{block}.0.temopral_conv.{rest}",
                       "attentions": f"output_blocks.{block}.1.{rest}",
                       "temp_attentions": f"output_blocks.{block}.2.{rest}",
                       "upsamplers": f"output_blocks.{last}.{3 if has_attention else 1}.{rest}"}[kind]
        out["model.diffusion_model." + ldm] = value
    return out


def ldm_vae(state: dict) -> dict:
    """AutoencoderKL's weights under LDM's autoencoder names (the decoder's blocks count up from
    the lowest resolution in LDM, down from it in diffusers)."""
    ups = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.up_blocks."))
    res = {"conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2]) if p[1] == "down_blocks" else ups - 1 - int(p[2])
            where = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                ldm = f"{p[0]}.{where}.{i}.block.{p[4]}.{res.get(p[5], p[5])}.{p[6]}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                ldm = f"{p[0]}.{where}.{i}.{'downsample' if where == 'down' else 'upsample'}.conv.{p[-1]}"
        elif p[1] == "mid_block" and p[2] == "resnets":
            ldm = f"{p[0]}.mid.block_{int(p[3]) + 1}.{res.get(p[4], p[4])}.{p[5]}"
        elif p[1] == "mid_block":
            ldm = f"{p[0]}.mid.attn_1.{attn[p[4]]}.{p[-1]}"
            value = value[:, :, None, None] if value.ndim == 2 else value  # LDM's 1x1 convolutions
        else:
            ldm = key.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + ldm] = value
    return out


def ldm_text(state: dict, extra_layer: dict) -> dict:
    """CLIPTextModel's weights under OpenCLIP's names, q/k/v packed into in_proj, plus what the
    official file has beyond the penultimate layer (a last block, text_projection, logit_scale)."""
    names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
           "positional_embedding": state["embeddings.position_embedding.weight"],
           "ln_final.weight": state["final_layer_norm.weight"], "ln_final.bias": state["final_layer_norm.bias"]}
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    for i in range(layers):
        pre = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [state[f"{pre}self_attn.{x}_proj.{kind}"] for x in "qkv"])
            for ours, ldm in names.items():
                out[f"transformer.resblocks.{i}.{ldm}.{kind}"] = state[f"{pre}{ours}.{kind}"]
    out.update({k.replace("LAST", str(layers)): v for k, v in extra_layer.items()})
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def write_videocrafter2(folder: Path, seed: int = 0) -> dict:
    """folder/model.ckpt (a Lightning-style {"state_dict": ...}), folder/tokenizer/ and
    folder/architecture.json; returns the paths and the models it was written from."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer(24)
    text = tiny_text_encoder(seed, tokenizer)
    vae = tiny_vae(seed + 2)
    torch.manual_seed(seed + 1)
    unet = FpsUNet3DConditionModel(**UNET_CONFIG)
    g = torch.Generator().manual_seed(seed + 3)
    dim = text.config.hidden_size
    extra = {f"transformer.resblocks.LAST.{n}": torch.randn(s, generator=g) for n, s in (
        ("attn.in_proj_weight", (3 * dim, dim)), ("ln_1.weight", (dim,)), ("mlp.c_fc.weight", (2 * dim, dim)))}
    extra.update(text_projection=torch.randn(dim, dim, generator=g), logit_scale=torch.tensor(4.6))
    state = {**ldm_unet(unet.state_dict(), UNET_CONFIG["layers_per_block"]), **ldm_vae(vae.state_dict()),
             **ldm_text(text.state_dict(), extra), "betas": torch.linspace(1e-4, 2e-2, 1000),
             "scale_arr": torch.ones(1400)}
    torch.save({"state_dict": state, "epoch": 0, "global_step": 0}, folder / "model.ckpt")
    tokenizer.save_pretrained(folder / "tokenizer")
    config = {"unet": {**UNET_CONFIG, "block_out_channels": list(UNET_CONFIG["block_out_channels"])},
              "vae": {k: v for k, v in vae.config.items() if not k.startswith("_")},
              "text_encoder": text.config.to_diff_dict()}
    (folder / "architecture.json").write_text(json.dumps(config, default=list))
    return {"checkpoint": folder / "model.ckpt", "tokenizer": folder / "tokenizer",
            "architecture": folder / "architecture.json", "unet": unet, "vae": vae, "text_encoder": text,
            "scheduler_config": SCHEDULER_CONFIG}
