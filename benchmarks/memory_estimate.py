"""Estimated peak GPU memory of one training step at real model size, without a GPU: the step is
traced on PyTorch's meta device (shapes only, no data, no weights downloaded) while every tensor
allocation and release is counted.

    python -m benchmarks.memory_estimate --backbone modelscope --sizes 256x256 512x512 --frames 16
    python -m benchmarks.memory_estimate --backbone animatediff --k 1 2 --decoded all random
    python -m benchmarks.memory_estimate --backbone videocrafter2 --sizes 320x512 --frames 12   # VADER's
    python -m benchmarks.memory_estimate --backbone svd --sizes 576x1024 --frames 25 14 --decoded random all

What is traced is what a step holds at once: one guided no-gradient step (the T-K steps before
the cutoff each look like it and free everything after), then K guided steps with gradients
(checkpointed, as training runs them), the decode of the frames the reward scores (checkpointed,
in chunks), a reward the size of a mean, and the backward pass. Attention is counted as a fused
kernel (flash / memory-efficient SDPA, as on a GPU): its output and log-sum-exp are kept, never
the attention matrix. The weights are counted apart: the frozen model in `--dtype`, and the LoRA
in float32 with its gradient and two AdamW moments.

The estimate is a floor, not a measurement: the CUDA caching allocator's fragmentation, cuBLAS
and cuDNN workspaces, the CUDA context (~0.5 GiB) and a reward model's own weights and
activations come on top. `--margin` (default 1.2) multiplies the total before comparing it with
the memory sizes in the table.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import random
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

GiB = 2 ** 30
CARDS = (12, 16, 24, 40, 80)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages alive at once among those created under the mode. A
    storage counts from the op that creates it until the last tensor viewing it is freed (a
    tensor autograd saves for backward stays alive with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.owners[key] -= 1
        if self.owners[key] == 0:
            self.current -= self.sizes.pop(key)
            del self.owners[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key not in self.owners:
                    self.owners[key] = 0
                    self.sizes[key] = t.untyped_storage().nbytes()
                    self.current += self.sizes[key]
                    self.peak = max(self.peak, self.current)
                self.owners[key] += 1
                weakref.finalize(t, self._release, key)
        return out


class FusedAttention(torch.autograd.Function):
    """Stands in for flash / memory-efficient attention on the meta device: the same output and
    saved tensors (q, k, v, output, log-sum-exp), no (tokens x tokens) matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    # torch's argument names: diffusers' attention dispatcher passes them by keyword
    return FusedAttention.apply(query, key, value)


def conditioning(backbone, height: int, width: int):
    """The (unconditional, conditional) inputs `predict` takes, and the model to give it. SVD is
    conditioned on a first frame, which a shapes-only trace has no file for: its rows are laid out
    as SVDBackbone.encode_prompts lays them out (image embedding, then the image's number; -1 for
    the unconditional row). They stay on the CPU because predict reads the numbers back (a meta
    tensor holds none), and the UNet is handed its embeddings on the meta device. The image's VAE
    latents, which predict computes once per image and size, go into the backbone's cache (they
    stay alive over training, so they are counted)."""
    from backbones.svd import SVDBackbone
    model = backbone.trainable_module()
    if not isinstance(backbone, SVDBackbone):
        return torch.cat([backbone.encode_prompts([""]), backbone.encode_prompts(["a dog"])]), model
    dim = backbone.text_encoder.config.projection_dim
    cond = torch.zeros(2, dim + 1)
    cond[0, -1], cond[1, -1] = -1, 0  # no image, image number 0
    backbone._latents[(0, height, width)] = torch.zeros(
        backbone.vae.config.latent_channels, height // backbone.spatial, width // backbone.spatial,
        device="meta", dtype=backbone.vae.dtype)

    def unet_on_meta(*args, encoder_hidden_states, **kwargs):
        return model(*args, encoder_hidden_states=encoder_hidden_states.to("meta"), **kwargs)
    return cond, unet_on_meta


def estimate(backbone, frames: int, height: int, width: int, k: int, decoded: str,
             guidance: float = 7.5) -> dict:
    from vader.frames import select_frames

    noise = torch.zeros(backbone.latent_shape(1, frames, height, width), device="meta")
    t = torch.tensor(500, device="meta")
    real_sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, fused_sdpa
    mode = LiveBytes()
    try:
        with mode:
            cond, model = conditioning(backbone, height, width)

            def eps(x):
                uncond, text = backbone.predict(model, torch.cat([x, x]), t, cond).chunk(2)
                return uncond + guidance * (text - uncond)

            with torch.no_grad():
                latents = noise - 0.1 * eps(noise)
            no_grad_peak = mode.peak
            for _ in range(k):  # as the sampler: the whole step checkpointed unless the blocks are
                out = eps(latents) if getattr(backbone, "checkpoint_blocks", False) else \
                    checkpoint(eps, latents, use_reentrant=False)
                latents = latents - 0.1 * out
            spec = decoded if decoded in ("all", "random") else int(decoded)
            index = select_frames(spec, frames, random.Random(0))
            video = backbone.decode(latents, index)
            loss = -video.float().mean()
            loss.backward()
    finally:
        F.scaled_dot_product_attention = real_sdpa
    return {"no_grad_step_gib": no_grad_peak / GiB, "activations_gib": mode.peak / GiB}


def weight_gib(backbone) -> tuple[float, float]:
    frozen = sum(p.numel() * p.element_size() for m in (backbone.unet, backbone.vae,
                 backbone.text_encoder) for p in m.parameters() if not p.requires_grad)
    lora = sum(p.numel() for p in backbone.trainable_module().parameters() if p.requires_grad)
    return frozen / GiB, lora * 4 * 4 / GiB  # float32 weight, gradient, two AdamW moments


def write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    """The rows and the arguments that made them, to `--json` when given."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": str(datetime.date.today()), "args": vars(args) | {
            "json": str(args.json)}, "rows": rows}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", nargs="+", default=["modelscope"],
                    choices=["modelscope", "animatediff", "animatediff_lightning", "videocrafter2", "svd"])
    ap.add_argument("--sizes", nargs="+", default=["256x256", "512x512"], help="HxW")
    ap.add_argument("--frames", type=int, nargs="+", default=[16])
    ap.add_argument("--k", type=int, nargs="+", default=[1], help="backprop_steps")
    ap.add_argument("--decoded", nargs="+", default=["random"],
                    help="frames decoded for the reward: all, random (one) or n (every n-th)")
    ap.add_argument("--checkpoint", nargs="+", default=["step", "blocks"], choices=["step", "blocks"],
                    help="checkpoint the whole UNet step, or each layer of its blocks "
                         "(backbone.checkpoint_blocks=true)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--margin", type=float, default=1.2, help="allocator and workspace factor")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from backbones.sizes import real_size_backbone

    rows = []
    for name, mode in itertools.product(args.backbone, args.checkpoint):
        backbone = real_size_backbone(name, "meta", args.dtype, lora_rank=args.lora_rank,
                                      checkpoint_blocks=mode == "blocks")
        frozen, lora = weight_gib(backbone)
        for size, frames, k, decoded in itertools.product(args.sizes, args.frames, args.k, args.decoded):
            height, width = (int(v) for v in size.lower().split("x"))
            row = {"backbone": name, "checkpoint": mode, "size": size, "frames": frames, "k": k,
                   "decoded": decoded,
                   "weights_gib": frozen, "lora_and_adam_gib": lora,
                   **estimate(backbone, frames, height, width, k, decoded)}
            row["total_gib"] = row["weights_gib"] + row["lora_and_adam_gib"] + row["activations_gib"]
            row["fits"] = [c for c in CARDS if row["total_gib"] * args.margin <= c * 1e9 / GiB]
            rows.append(row)
    print(f"# {datetime.date.today()}  estimate on the meta device (no GPU used), torch "
          f"{torch.__version__}, weights {args.dtype}, LoRA rank {args.lora_rank}, guidance on, "
          f"margin x{args.margin}")
    print(f"{'backbone':>22} {'ckpt':>6} {'size':>9} {'frames':>6} {'K':>2} {'decoded':>7} "
          f"{'weights':>8} {'activ.':>7} {'total GiB':>9}  fits in (GB)")
    for r in rows:
        print(f"{r['backbone']:>22} {r['checkpoint']:>6} {r['size']:>9} {r['frames']:>6} {r['k']:>2} "
              f"{r['decoded']:>7} "
              f"{r['weights_gib'] + r['lora_and_adam_gib']:>8.2f} {r['activations_gib']:>7.2f} "
              f"{r['total_gib']:>9.2f}  {', '.join(map(str, r['fits'])) or 'none of ' + str(CARDS)}")
    write_json(args, rows)


if __name__ == "__main__":
    main()
