"""VideoCrafter2's official checkpoint (`model.ckpt`, the LDM layout of AILab-CVC/VideoCrafter) to
our parts: `model.diffusion_model.*` to diffusers' UNet3DConditionModel names (plus the fps
embedding, backbones/videocrafter2.py), `first_stage_model.*` through diffusers' own LDM VAE
converter, `cond_stage_model.*` (OpenCLIP ViT-H text tower) through diffusers' own OpenCLIP
converter. Every key is accounted for: converted, or in `DROPPED` with the reason; anything else
raises, naming it.

The UNet rules are ours: diffusers converts 2-D LDM UNets only (`convert_ldm_unet_checkpoint`
knows no temporal convolutions, temporal transformers, `init_attn` or fps embedding). They map the
1,484 tensors of VideoCrafter2's UNet one to one onto UNet3DConditionModel with ModelScope's
config (docs/design/videocrafter2.md section 3.4; tests/test_videocrafter2.py checks it against the
official architecture's full key list, tests/data/videocrafter2_keys.json).
"""
from __future__ import annotations

import re
from typing import Any

import torch

UNET, VAE, TEXT = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."
# LatentDiffusion's schedule buffers (recomputed by our scheduler) and the parts of the OpenCLIP
# model its penultimate-layer text encoder never runs: the last block, the projection, the
# contrastive temperature.
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                    "scale_arr")
RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
          ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))


def dropped(key: str, text_layers: int) -> bool:
    """Keys with no counterpart in our parts (see SCHEDULE_BUFFERS)."""
    if key in SCHEDULE_BUFFERS or key in (TEXT + "text_projection", TEXT + "logit_scale"):
        return True
    m = re.match(re.escape(TEXT) + r"transformer\.resblocks\.(\d+)\.", key)
    return bool(m) and int(m[1]) >= text_layers


def dropped_text_keys(layers: int) -> list[str]:
    """The text tensors of an OpenCLIP checkpoint with `layers` + 1 blocks that a `layers`-layer
    encoder drops: the last block's, text_projection, logit_scale."""
    block = [f"{TEXT}transformer.resblocks.{layers}.{part}.{kind}"
             for part in ("attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj") for kind in ("weight", "bias")]
    block += [f"{TEXT}transformer.resblocks.{layers}.attn.in_proj_{kind}" for kind in ("weight", "bias")]
    return [*block, TEXT + "text_projection", TEXT + "logit_scale"]


def _resnet(rest: str, resnet: str, temp_conv: str) -> str:
    if rest.startswith("temopral_conv."):  # sic: VideoCrafter's spelling
        return f"{temp_conv}.{rest[len('temopral_conv.'):]}"
    for ldm, ours in RESNET:
        if rest.startswith(ldm + "."):
            return f"{resnet}.{ours}{rest[len(ldm):]}"
    raise KeyError(rest)


def unet_key(key: str, layers: int = 2) -> str:
    """Our UNet's name for one LDM UNet key (without the `model.diffusion_model.` prefix), for a
    UNet of `layers` resnets per down block (VideoCrafter2: 2; one more per up block)."""
    m = re.match(r"(time_embed|fps_embedding)\.([02])\.(.*)", key)
    if m:
        return f"{'time_embedding' if m[1] == 'time_embed' else 'fps_embedding'}.linear_{1 + int(m[2]) // 2}.{m[3]}"
    for ldm, ours in (("input_blocks.0.0.", "conv_in."), ("init_attn.0.", "transformer_in."),
                      ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")):
        if key.startswith(ldm):
            return ours + key[len(ldm):]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:  # a level: `layers` blocks (resnet, attention, temporal attention), then its downsampler
        level, j = divmod(int(m[1]) - 1, layers + 1)
        block, part, rest = f"down_blocks.{level}", int(m[2]), m[3]
        if j == layers:
            return f"{block}.downsamplers.0.conv.{rest[len('op.'):]}"
        if part == 0:
            return _resnet(rest, f"{block}.resnets.{j}", f"{block}.temp_convs.{j}")
        return f"{block}.{('attentions', 'temp_attentions')[part - 1]}.{j}.{rest}"
    m = re.match(r"middle_block\.(\d+)\.(.*)", key)
    if m:  # resnet, attention, temporal attention, resnet
        part, rest = int(m[1]), m[2]
        if part in (0, 3):
            i = part // 3
            return _resnet(rest, f"mid_block.resnets.{i}", f"mid_block.temp_convs.{i}")
        return f"mid_block.{('attentions', 'temp_attentions')[part - 1]}.0.{rest}"
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
    if m:  # a level: `layers` + 1 blocks, the last ending with its upsampler (after its attentions)
        level, j = divmod(int(m[1]), layers + 1)
        block, part, rest = f"up_blocks.{level}", int(m[2]), m[3]
        if rest.startswith("conv.") and part in (1, 3):
            return f"{block}.upsamplers.0.conv.{rest[len('conv.'):]}"
        if part == 0:
            return _resnet(rest, f"{block}.resnets.{j}", f"{block}.temp_convs.{j}")
        return f"{block}.{('attentions', 'temp_attentions')[part - 1]}.{j}.{rest}"
    raise KeyError(key)


def convert_unet(state: dict[str, torch.Tensor], layers: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        ours = unet_key(key[len(UNET):], layers)
        if ours in out:
            raise ValueError(f"two LDM keys map onto {ours}")
        # init_attn's proj_in/proj_out are 1x1 Conv1d in VideoCrafter, Linear in diffusers.
        squeeze = ours.startswith("transformer_in.proj_") and ours.endswith(".weight") and value.ndim == 3
        out[ours] = value.squeeze(-1) if squeeze else value
    return out


def convert_checkpoint(state: dict[str, torch.Tensor], vae_config: dict[str, Any],
                       text_encoder: torch.nn.Module, unet_layers: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet", "vae", "text_encoder"} state dicts from an official checkpoint's state dict;
    raises ValueError naming any key neither converted nor known to be dropped."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint

    layers = text_encoder.config.num_hidden_layers
    unknown = [k for k in state if not k.startswith((UNET, VAE, TEXT)) and not dropped(k, layers)]
    if unknown:
        raise ValueError(f"not a VideoCrafter checkpoint: {len(unknown)} keys outside "
                         f"{UNET}, {VAE} and {TEXT} (e.g. {unknown[:3]})")
    unet = convert_unet({k: v for k, v in state.items() if k.startswith(UNET)}, unet_layers)
    vae_in = {k: v for k, v in state.items() if k.startswith(VAE)}
    vae = convert_ldm_vae_checkpoint(vae_in, vae_config)
    text_in = {k: v for k, v in state.items() if k.startswith(TEXT) and not dropped(k, layers)}
    # diffusers names them for transformers 4's CLIPTextModel (a `text_model.` wrapper); 5 has none.
    text = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(
        text_encoder, text_in, prefix=TEXT).items()}
    return {"unet": unet, "vae": vae, "text_encoder": text}


def state_dict_of(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The weights inside a loaded `model.ckpt`: a Lightning checkpoint's `state_dict`, a
    DeepSpeed `module`, or the bare dict."""
    for key in ("state_dict", "module"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError("backbone.checkpoint: no state dict found (expected a Lightning checkpoint with "
                     "'state_dict', a DeepSpeed one with 'module', or a dict of tensors)")
