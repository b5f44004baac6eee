"""Real-size configurations build on the meta device (no download, no memory), and their
parameter counts match the published sizes. Published figures and their sources:
backbones/configs/SOURCES.md."""
from __future__ import annotations

import pytest

from backbones.sizes import count, denoiser, load_config, lora_count, real_size_parts

# Published sizes: parameter counts where the model's documentation states them, otherwise the
# weight file size on the hub divided by bytes per parameter (fp32 files: 4 bytes).
PUBLISHED = {
    ("animatediff", "image_unet"): 859_520_964,       # SD 1.5 UNet, "859.52M"
    ("animatediff", "vae"): 83_653_863,               # SD VAE, 334.6 MB fp32 file
    ("animatediff", "text_encoder"): 123_060_480,     # CLIP ViT-L/14 text, 492 MB fp32 file
    ("animatediff", "motion_adapter"): 1.82e9 / 4,    # v1-5-2 safetensors, 1.82 GB fp32
    ("modelscope", "unet"): 5.65e9 / 4,               # unet safetensors, 5.65 GB fp32
    ("modelscope", "vae"): 83_653_863,                # the SD VAE architecture
    # Wan2.1-T2V-1.3B-Diffusers: the safetensors indexes' total_size (exact tensor bytes, fp32)
    ("wan", "transformer"): 5_675_987_200 // 4,
    ("wan", "text_encoder"): 22_723_641_344 // 4,     # umT5-XXL encoder
    ("wan", "vae"): 508e6 / 4,                        # vae safetensors, 508 MB fp32
    # THUDM/CogVideoX-2b / -5b: file sizes in the hub trees
    ("cogvideox_2b", "transformer"): 3.39e9 / 2,      # 3.39 GB fp16
    ("cogvideox_2b", "vae"): 862e6 / 4,               # 862 MB fp32 (the fp16 upload was 431 MB)
    ("cogvideox_2b", "text_encoder"): 9.52e9 / 2,     # T5-XXL encoder, 4.99 + 4.53 GB fp16
    ("cogvideox_5b", "transformer"): 11.15e9 / 2,     # 9.93 + 1.22 GB bf16
    # stabilityai/stable-video-diffusion-img2vid-xt: file sizes in the hub tree
    ("svd", "unet"): 3.05e9 / 2,                      # 3.05 GB fp16 (6.1 GB fp32)
    ("svd", "vae"): 391e6 / 4,                        # 391 MB fp32 (196 MB fp16)
    ("svd", "image_encoder"): 2.53e9 / 4,             # CLIP ViT-H/14 vision, 2.53 GB fp32 (1.26 GB fp16)
}


@pytest.fixture(scope="module",
                params=["modelscope", "animatediff", "svd", "wan", "cogvideox_2b", "cogvideox_5b"])
def parts(request):
    return request.param, real_size_parts(request.param)


def test_real_size_parts_live_on_the_meta_device(parts):
    _, modules = parts
    for module in modules.values():
        assert {p.device.type for p in module.parameters()} == {"meta"}


def test_parameter_counts_match_published_sizes(parts):
    backbone, modules = parts
    for (name, part), published in PUBLISHED.items():
        if name == backbone:
            # File sizes are given to 3 significant figures and include small headers and
            # buffers, hence 0.5%; exact published counts (and byte totals) must match exactly.
            tolerance = 0 if isinstance(published, int) else 0.005
            assert abs(count(modules[part]) - published) <= tolerance * published, (part, count(modules[part]))


def test_animatediff_unet_is_image_unet_plus_motion_modules():
    modules = real_size_parts("animatediff")
    assert count(modules["unet"]) == count(modules["image_unet"]) + count(modules["motion_adapter"])


def test_lightning_uses_the_same_sizes_and_lora_is_small():
    assert count(real_size_parts("animatediff_lightning")["unet"]) == 1_312_730_244
    unet = real_size_parts("modelscope")["unet"]
    assert 0 < lora_count(unet, rank=16) < 0.01 * count(unet)


def test_diffusion_transformer_counts():
    """Our builds' exact counts (the figures in configs/SOURCES.md and docs/performance.md)."""
    exact = {"wan": (1_418_996_800, 126_892_531, 5_680_910_336),
             "cogvideox_2b": (1_693_783_872, 215_583_907, 4_762_310_656),
             "cogvideox_5b": (5_570_283_072, 215_583_907, 4_762_310_656)}
    for backbone, counts in exact.items():
        parts = real_size_parts(backbone)
        assert tuple(count(parts[k]) for k in ("transformer", "vae", "text_encoder")) == counts, backbone


def test_dit_lora_counts_follow_the_configs():
    # rank 16 on to_q/to_k/to_v/to_out.0, each a (width x width) projection: r * (width + width)
    # per projection. Wan has self- and cross-attention per block; CogVideoX one joint attention.
    for backbone, attentions in (("wan", 2), ("cogvideox_2b", 1), ("cogvideox_5b", 1)):
        config = load_config({"wan": "wan2.1_t2v_1.3b_transformer"}.get(backbone, f"{backbone}_transformer"))
        width = config["num_attention_heads"] * config.get("attention_head_dim", 64)
        expected = config["num_layers"] * attentions * 4 * 16 * 2 * width
        assert lora_count(denoiser(real_size_parts(backbone))) == expected, backbone


def test_dit_memory_estimate_traces_a_step_and_counts_the_meta_weights():
    import torch

    from benchmarks.memory_estimate import GiB
    from benchmarks.memory_estimate_dit import build, estimate, weight_gib
    parts = build("cogvideox_5b", torch.bfloat16, lora_rank=16, checkpoint_blocks=True, vae_blocks=False)
    weights = weight_gib(parts)
    assert weights["weights_gib"] == pytest.approx((5_570_283_072 + 215_583_907) * 2 / GiB)
    assert weights["lora_and_adam_gib"] == pytest.approx(16_515_072 * 16 / GiB)
    # a small video: rotary embeddings, the guided steps and the causal decode all traced; the
    # step with gradients and the decode hold more than the no-gradient step before them
    traced = estimate("cogvideox_5b", parts, 5, 32, 48, 1, True, "all")
    assert 0 < traced["no_grad_step_gib"] < traced["activations_gib"]


def test_svd_counts_and_lora_follow_the_configs():
    """Our build's exact counts (the figures in configs/SOURCES.md and docs/performance.md), and
    the LoRA count derived from the UNet config: every layer with attention has a spatial and a
    temporal transformer block, each with self-attention (r * 2 * width per projection, 4
    projections) and cross-attention to the 1024-wide image embedding (to_k and to_v take 1024)."""
    parts = real_size_parts("svd")
    assert tuple(count(parts[k]) for k in ("unet", "vae", "image_encoder")) == \
        (1_524_623_082, 97_742_847, 632_076_800)
    config, r = load_config("svd_xt_unet"), 16
    widths = config["block_out_channels"]
    n = config["layers_per_block"]
    # down blocks 0-2 and up blocks 1-3 have attention (n and n + 1 layers), the mid block one
    layers = [w for w in widths[:3] for _ in range(n)] + [widths[-1]] + \
        [w for w in reversed(widths[:3]) for _ in range(n + 1)]
    ctx = config["cross_attention_dim"]
    per_block = [r * (4 * 2 * w) + r * (2 * w + 2 * (ctx + w) + 2 * w) for w in layers]
    assert lora_count(parts["unet"]) == 2 * sum(per_block) == 6_639_616


def test_svd_memory_estimate_traces_a_step_without_an_image():
    """The meta trace builds SVD's conditioning itself (no first-frame file) and counts the
    frozen weights in their conf dtypes: UNet and image encoder bf16, temporal VAE float32."""
    from benchmarks.memory_estimate import GiB, estimate, weight_gib
    from backbones.sizes import real_size_backbone
    backbone = real_size_backbone("svd", "meta", "bf16")
    frozen, lora = weight_gib(backbone)
    assert frozen == pytest.approx(((1_524_623_082 + 632_076_800) * 2 + 97_742_847 * 4) / GiB)
    assert lora == pytest.approx(6_639_616 * 16 / GiB)
    traced = estimate(backbone, 2, 64, 64, 1, "random")
    assert 0 < traced["no_grad_step_gib"] < traced["activations_gib"]
