"""Estimated peak GPU memory of one reward-gradient training step for the diffusion transformers
at published size (Wan2.1-T2V-1.3B, CogVideoX-2B, CogVideoX-5B), without a GPU: the parts are
built on PyTorch's meta device from the sourced configs (backbones/sizes.py) and the step is
traced with benchmarks/memory_estimate.py's allocation counter and fused-attention stand-in.

    python -m benchmarks.memory_estimate_dit
    python -m benchmarks.memory_estimate_dit --cases wan:81x480x832 --k 1 2 --checkpoint blocks

The step traced is memory_estimate.py's: one guided no-gradient step, K guided steps with
gradients, the decode with gradients (checkpointed) of the whole video (`--decoded all`: both VAEs
are causal, so a frame needs every latent frame before it) or of nothing (`none`: a reward on the
latents, i.e. the transformer's share alone), a reward the size of a mean, and the backward
pass. Guidance is one doubled batch; prompt embeddings are given (512 umT5 tokens for Wan, 226 T5
tokens for CogVideoX), as the transformer backbones take them from a prompt cache. The calls are
the diffusers pipelines' (WanPipeline, CogVideoXPipeline, CogVideoX-5B's rotary embeddings
included). The traced code is diffusers', not one of our backbones, so the estimate does not
follow changes inside a backbone (its own checkpointing or decoding choices, for instance).

Weights are counted apart: the transformer and VAE in `--dtype`, the LoRA (rank `--lora-rank` on
to_q/to_k/to_v/to_out.0) in float32 with its gradient and two AdamW moments, and the text encoder
(umT5-XXL 5.7 B, T5-XXL 4.8 B) in `--dtype` in its own column: the totals are given with it
offloaded to the CPU (it runs once per prompt, outside the step) and with it on the GPU.

An estimate, not a measurement: the CUDA allocator's fragmentation, cuBLAS/cuDNN workspaces, the
CUDA context (~0.5 GiB) and a reward model come on top; `--margin` (1.2) multiplies each total
before it is compared with the card sizes.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from benchmarks.memory_estimate import CARDS, GiB, LiveBytes, fused_sdpa, write_json

DEFAULT_CASES = ("wan:33x240x416", "wan:81x480x832", "cogvideox_2b:49x480x720",
                 "cogvideox_5b:49x480x720")
TEXT_TOKENS = {"wan": 512, "cogvideox_2b": 226, "cogvideox_5b": 226}  # the pipelines' max lengths


def build(name: str, dtype: torch.dtype, lora_rank: int, checkpoint_blocks: bool,
          vae_blocks: bool) -> dict:
    """The meta-device parts, frozen in `dtype`, with float32 LoRA on the transformer."""
    from backbones.sizes import add_lora, real_size_parts
    parts = real_size_parts(name)
    for module in parts.values():
        module.requires_grad_(False).to(dtype).eval()
    add_lora(parts["transformer"], lora_rank)
    for p in parts["transformer"].parameters():
        if p.requires_grad:  # as the backbones keep LoRA: float32 whatever the frozen dtype
            p.data = p.data.float()
    if checkpoint_blocks:  # diffusers checkpoints each transformer block while gradients are on
        parts["transformer"].enable_gradient_checkpointing()
    if vae_blocks:  # the same inside the decoder, where diffusers supports it (CogVideoX, not Wan)
        if not parts["vae"]._supports_gradient_checkpointing:
            raise ValueError(f"--vae-blocks: diffusers' {type(parts['vae']).__name__} has no "
                             "gradient checkpointing")
        parts["vae"].enable_gradient_checkpointing()
    return parts


def weight_gib(parts: dict) -> dict:
    def frozen(module):
        return sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad) / GiB
    lora = sum(p.numel() for p in parts["transformer"].parameters() if p.requires_grad)
    return {"weights_gib": frozen(parts["transformer"]) + frozen(parts["vae"]),
            "text_encoder_gib": frozen(parts["text_encoder"]),
            "lora_and_adam_gib": lora * 4 * 4 / GiB}  # float32 weight, gradient, two AdamW moments


def estimate(name: str, parts: dict, frames: int, height: int, width: int, k: int,
             checkpoint_blocks: bool, decoded: str, guidance: float = 5.0) -> dict:
    transformer, vae = parts["transformer"], parts["vae"]
    dtype = next(transformer.parameters()).dtype
    latent_frames, h, w = (frames - 1) // 4 + 1, height // 8, width // 8  # both VAEs: 4x time, 8x space
    wan = name == "wan"
    shape = (1, 16, latent_frames, h, w) if wan else (1, latent_frames, 16, h, w)  # pipelines' layouts
    extra = {}
    if transformer.config.get("use_rotary_positional_embeddings"):
        # CogVideoXPipeline's own helper, called with the two attributes it reads
        from diffusers import CogVideoXPipeline
        cos, sin = CogVideoXPipeline._prepare_rotary_positional_embeddings(
            SimpleNamespace(vae_scale_factor_spatial=8, transformer=transformer), height, width,
            latent_frames, "cpu")
        extra["image_rotary_emb"] = (cos.to("meta"), sin.to("meta"))
    real_sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, fused_sdpa
    mode = LiveBytes()
    try:
        with mode:
            noise = torch.zeros(shape, device="meta")
            cond = torch.zeros(2, TEXT_TOKENS[name], 4096, device="meta", dtype=dtype)
            t = torch.full((2,), 500.0, device="meta")

            def velocity(x):
                out = transformer(hidden_states=torch.cat([x, x]).to(dtype), timestep=t,
                                  encoder_hidden_states=cond, return_dict=False, **extra)[0]
                uncond, text = out.float().chunk(2)
                return uncond + guidance * (text - uncond)

            def decode(z):
                z = z.to(dtype)
                # WanPipeline first undoes the per-channel latent normalisation (elementwise, left
                # out); CogVideoXPipeline.decode_latents puts frames back in place and unscales.
                if not wan:
                    z = z.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor
                return vae.decode(z, return_dict=False)[0]

            with torch.no_grad():
                latents = noise - 0.1 * velocity(noise)
            no_grad_peak = mode.peak
            for _ in range(k):  # as the sampler: the whole step checkpointed unless the blocks are
                out = velocity(latents) if checkpoint_blocks else \
                    checkpoint(velocity, latents, use_reentrant=False)
                latents = latents - 0.1 * out
            if decoded == "all":  # both VAEs are causal: every frame depends on those before it
                video = checkpoint(decode, latents, use_reentrant=False)
                loss = -video.float().mean()
            else:  # a reward on the latents: what the transformer alone costs
                loss = -latents.mean()
            loss.backward()
    finally:
        F.scaled_dot_product_attention = real_sdpa
    return {"no_grad_step_gib": no_grad_peak / GiB, "activations_gib": mode.peak / GiB}


def fits(total_gib: float, margin: float) -> str:
    cards = [c for c in CARDS if total_gib * margin <= c * 1e9 / GiB]
    return f"{cards[0]} GB and up" if cards else f"none of {CARDS}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                    help="backbone:FRAMESxHEIGHTxWIDTH (backbone: wan, cogvideox_2b, cogvideox_5b)")
    ap.add_argument("--k", type=int, nargs="+", default=[1], help="backprop_steps")
    ap.add_argument("--checkpoint", nargs="+", default=["blocks"], choices=["step", "blocks"],
                    help="checkpoint each transformer block, or the whole step")
    ap.add_argument("--decoded", nargs="+", default=["none", "all"], choices=["none", "all"],
                    help="decode the whole video for the reward, or none (a reward on the latents)")
    ap.add_argument("--vae-blocks", action="store_true",
                    help="also checkpoint the VAE decoder's blocks (CogVideoX only)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--margin", type=float, default=1.2, help="allocator and workspace factor")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    rows = []
    for case, mode, k, decoded in itertools.product(args.cases, args.checkpoint, args.k, args.decoded):
        name, size = case.split(":")
        frames, height, width = (int(v) for v in size.lower().split("x"))
        parts = build(name, dtype, args.lora_rank, mode == "blocks", args.vae_blocks)
        row = {"backbone": name, "checkpoint": mode, "video": f"{frames}x{height}x{width}", "k": k,
               "decoded": decoded, **weight_gib(parts),
               **estimate(name, parts, frames, height, width, k, mode == "blocks", decoded)}
        row["total_gib"] = row["weights_gib"] + row["lora_and_adam_gib"] + row["activations_gib"]
        row["total_with_text_encoder_gib"] = row["total_gib"] + row["text_encoder_gib"]
        rows.append(row)
    print(f"# {datetime.date.today()}  estimate on the meta device (no GPU used), torch "
          f"{torch.__version__}, weights {args.dtype}, LoRA rank {args.lora_rank}, guidance on, "
          f"VAE blocks checkpointed: {args.vae_blocks}, margin x{args.margin}; GiB")
    print("| backbone | ckpt | video (F×H×W) | K | decoded | transformer + VAE | LoRA + AdamW "
          "| text encoder | activations | total, text encoder offloaded | fits | total, text "
          "encoder on GPU | fits |")
    print("|" + " --- |" * 13)
    for r in rows:
        print(f"| {r['backbone']} | {r['checkpoint']} | {r['video']} | {r['k']} | {r['decoded']} "
              f"| {r['weights_gib']:.2f} | {r['lora_and_adam_gib']:.2f} | {r['text_encoder_gib']:.2f} "
              f"| {r['activations_gib']:.2f} | {r['total_gib']:.2f} | {fits(r['total_gib'], args.margin)} "
              f"| {r['total_with_text_encoder_gib']:.2f} "
              f"| {fits(r['total_with_text_encoder_gib'], args.margin)} |")
    write_json(args, rows)


if __name__ == "__main__":
    main()
