"""What the transformer backbones share (backbones/dit.py), on the tiny Wan and CogVideoX builds:
the LoRA contract (only LoRA trains, its gradient arrives, save/load round trip, diffusers'
`load_lora_weights` makes our video), the offline error, the prompt cache (the text encoder runs
once per prompt, same embeddings), the offloaded encoder staying off the transformer's device,
per-block checkpointing giving the same gradients, and Wan decoding the frames a reward asks for
from the latent prefix, exactly."""
from __future__ import annotations

import pytest
import torch

from backbones.cogvideox import cogvideox
from backbones.wan import wan
from tests.tiny_cogvideox import write_cogvideox
from tests.tiny_wan import write_wan
from vader.sampling.differentiable import make_noise, sample

PROMPTS = ["a red circle moves left", "a blue square on a black background"]
F32 = dict(transformer_dtype="fp32", text_encoder_dtype="fp32")
FRAMES = {"wan": 5, "cogvideox": 9}
HUB = {"wan": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "cogvideox": "THUDM/CogVideoX-2b"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return {"wan": write_wan(root / "wan"), "cogvideox": write_cogvideox(root / "cogvideox")}


def build(name: str, folders, **kwargs):
    kwargs = {**F32, **kwargs}
    if name == "wan":
        return wan(str(folders["wan"]), max_sequence_length=16, **kwargs)
    return cogvideox(str(folders["cogvideox"]), vae_dtype="fp32", **kwargs)


def pipeline(name: str, folders):
    from diffusers import CogVideoXPipeline, WanPipeline

    pipe = {"wan": WanPipeline, "cogvideox": CogVideoXPipeline}[name].from_pretrained(folders[name])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(name: str, pipe, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """The pipeline's latents for our noise, in our layout (CogVideoX's pipeline: (B, T, C, h, w))."""
    cog = name == "cogvideox"
    out = pipe(PROMPTS[:len(noise)], num_inference_steps=steps, guidance_scale=guidance, height=16, width=16,
               num_frames=FRAMES[name], latents=noise.permute(0, 2, 1, 3, 4).clone() if cog else noise.clone(),
               max_sequence_length=16, output_type="latent").frames
    return out.permute(0, 2, 1, 3, 4) if cog else out


def set_lora(model, std: float, seed: int, names: str = "lora_B") -> None:
    with torch.no_grad():
        for i, (n, p) in enumerate(model.named_parameters()):
            if names in n:
                p.normal_(0, std, generator=torch.Generator().manual_seed(seed + i))


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_only_lora_trains_and_its_gradient_arrives_and_round_trips(folders, name):
    backbone = build(name, folders)
    model = backbone.trainable_module()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    set_lora(model, 0.05, 0)
    noise = make_noise(backbone.latent_shape(1, FRAMES[name], 16, 16), [1])
    latents = sample(backbone, model, PROMPTS[:1], noise, num_inference_steps=3, guidance_scale=6.0, cutoff=2)
    backbone.decode(latents).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().max() > 0) for g in grads) > 0.9 * len(grads)
    state = backbone.lora_state_dict()
    assert all(k.startswith("transformer.") for k in state)
    fresh = build(name, folders)
    fresh.load_lora_state_dict(state)
    with torch.no_grad():
        a = sample(backbone, model, PROMPTS[:1], noise, num_inference_steps=2, guidance_scale=6.0)
        b = sample(fresh, fresh.trainable_module(), PROMPTS[:1], noise, num_inference_steps=2, guidance_scale=6.0)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_a_saved_lora_loads_with_the_pipelines_load_lora_weights(folders, tmp_path, name):
    """Our checkpoint's LoRA file (rank 4, alpha 8: the scale must travel in the file) loads with
    diffusers' own WanPipeline / CogVideoXPipeline.load_lora_weights, and the pipeline then makes
    our video."""
    from vader.loop import checkpoint as ckpt

    ours = build(name, folders, lora_rank=4, lora_alpha=8)
    set_lora(ours.trainable_module(), 0.1, 2)
    saved = ckpt.save_checkpoint(tmp_path / "checkpoints", 1, ours.lora_state_dict(),
                                 lora_metadata=ours.lora_metadata(), backbone=ours.name)
    pipe = pipeline(name, folders)
    noise = make_noise(ours.latent_shape(1, FRAMES[name], 16, 16), [9])
    base = pipeline_latents(name, pipe, noise, 3, 5.0)
    pipe.load_lora_weights(str(ckpt.resolve_lora_path(saved)))
    with torch.no_grad():
        mine = sample(ours, ours.trainable_module(), PROMPTS[:1], noise, num_inference_steps=3, guidance_scale=5.0)
        theirs = pipeline_latents(name, pipe, noise, 3, 5.0)
    assert (mine - base).abs().max() > 1e-3  # the LoRA changes the video
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_a_missing_hub_model_stops_at_once_naming_the_key(monkeypatch, name):
    """Offline and not in the cache: refused before any weight loads, within seconds, naming the
    key and the download command."""
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"backbone.pretrained.*huggingface-cli download {HUB[name]}"):
        {"wan": wan, "cogvideox": cogvideox}[name](HUB[name])
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_bf16_weights_sample_without_autocast(folders, name):
    """The frozen weights in bf16 (the default) and no autocast (mixed_precision=no): the inputs
    take the transformer's dtype, not that of a module diffusers keeps in float32 (Wan's
    scale_shift_table comes first among its parameters)."""
    backbone = build(name, folders, transformer_dtype="bf16")
    assert backbone.weight_dtype == torch.bfloat16
    noise = make_noise(backbone.latent_shape(1, FRAMES[name], 16, 16), [1])
    with torch.no_grad():
        out = sample(backbone, backbone.trainable_module(), PROMPTS[:1], noise, num_inference_steps=2,
                     guidance_scale=5.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_the_prompt_cache_encodes_each_prompt_once_and_changes_nothing(folders, name):
    cached, uncached = build(name, folders, prompt_cache_size=2), build(name, folders, prompt_cache_size=0)
    first = cached.encode_prompts([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert cached.text_encoder_calls == 2
    again = cached.encode_prompts(PROMPTS[::-1])
    assert cached.text_encoder_calls == 2  # both were cached
    torch.testing.assert_close(first, uncached.encode_prompts([PROMPTS[0], PROMPTS[1], PROMPTS[0]]),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again, first[[1, 0]], atol=0, rtol=0)
    cached.encode_prompts(["a dog"])  # a third prompt evicts the least recently used (PROMPTS[1])
    assert cached.text_encoder_calls == 3
    cached.encode_prompts([PROMPTS[0]])
    assert cached.text_encoder_calls == 3
    cached.encode_prompts([PROMPTS[1]])
    assert cached.text_encoder_calls == 4
    with pytest.raises(ValueError, match="prompt_cache_size=-1"):
        build(name, folders, prompt_cache_size=-1)


def test_an_offloaded_text_encoder_stays_where_it_was_when_the_backbone_moves(folders):
    """`to(device)` moves the transformer and VAE; the offloaded encoder stays on the CPU. (Its
    visits to a GPU need one; here the move is to the CPU's meta twin, which holds no memory.)"""
    offloaded, kept = build("wan", folders), build("wan", folders, text_encoder_offload=False)
    for backbone in (offloaded, kept):
        backbone.to("meta")
    assert next(offloaded.text_encoder.parameters()).device.type == "cpu"
    assert next(kept.text_encoder.parameters()).device.type == "meta"
    assert next(offloaded.transformer.parameters()).device.type == "meta"


@pytest.mark.parametrize("name", ["wan", "cogvideox"])
def test_checkpointing_blocks_gives_the_same_lora_gradients(folders, name):
    grads = []
    for blocks in (False, True):
        backbone = build(name, folders, checkpoint_blocks=blocks)
        assert backbone.checkpoint_blocks == blocks
        model = backbone.trainable_module()
        set_lora(model, 0.05, 0, "lora_")  # the same LoRA in both (peft draws lora_A from the global generator)
        noise = make_noise(backbone.latent_shape(1, FRAMES[name], 16, 16), [1])
        latents = sample(backbone, model, PROMPTS[:1], noise, num_inference_steps=3, guidance_scale=5.0,
                         cutoff=1)
        backbone.decode(latents).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_wan_decodes_the_frames_asked_for_from_the_latent_prefix_exactly(folders):
    """Frame f needs latent frames 0 .. ceil(f / 4) of the causal VAE: those frames equal the same
    frames of a whole decode, bit for bit."""
    backbone = build("wan", folders)
    z = torch.randn(1, 16, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = backbone.decode(z)
        assert whole.shape[1] == 13
        calls = []
        hook = backbone.vae.post_quant_conv.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[2]))
        for index in ([0], [1], [4], [5, 2], [12]):
            torch.testing.assert_close(backbone.decode(z, torch.tensor(index)), whole[:, index], atol=0, rtol=0)
        hook.remove()
    assert calls == [1, 2, 2, 3, 4]  # latent frames decoded for each request
