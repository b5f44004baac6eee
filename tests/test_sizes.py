"""Real-size configurations build on the meta device (no download, no memory), and their
parameter counts match the published sizes. Published figures and their sources:
backbones/configs/SOURCES.md."""
from __future__ import annotations

import pytest

from backbones.sizes import count, lora_count, real_size_parts

# Published sizes: parameter counts where the model's documentation states them, otherwise the
# weight file size on the hub divided by bytes per parameter (fp32 files: 4 bytes).
PUBLISHED = {
    ("animatediff", "image_unet"): 859_520_964,       # SD 1.5 UNet, "859.52M"
    ("animatediff", "vae"): 83_653_863,               # SD VAE, 334.6 MB fp32 file
    ("animatediff", "text_encoder"): 123_060_480,     # CLIP ViT-L/14 text, 492 MB fp32 file
    ("animatediff", "motion_adapter"): 1.82e9 / 4,    # v1-5-2 safetensors, 1.82 GB fp32
    ("modelscope", "unet"): 5.65e9 / 4,               # unet safetensors, 5.65 GB fp32
    ("modelscope", "vae"): 83_653_863,                # the SD VAE architecture
}


@pytest.fixture(scope="module", params=["modelscope", "animatediff"])
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
            # buffers, hence 0.5%; exact published counts must match exactly.
            tolerance = 0 if isinstance(published, int) else 0.005
            assert abs(count(modules[part]) - published) <= tolerance * published, (part, count(modules[part]))


def test_animatediff_unet_is_image_unet_plus_motion_modules():
    modules = real_size_parts("animatediff")
    assert count(modules["unet"]) == count(modules["image_unet"]) + count(modules["motion_adapter"])


def test_lightning_uses_the_same_sizes_and_lora_is_small():
    assert count(real_size_parts("animatediff_lightning")["unet"]) == 1_312_730_244
    unet = real_size_parts("modelscope")["unet"]
    assert 0 < lora_count(unet, rank=16) < 0.01 * count(unet)
