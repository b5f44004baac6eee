"""What the transformer backbones share (backbones/dit.py), on the tiny Wan and CogVideoX builds:
the prompt cache runs the text encoder once per prompt and gives the same embeddings, the offloaded
encoder stays off the transformer's device, per-block checkpointing gives the same gradients as
none, and Wan decodes the frames a reward asks for from the latent prefix, exactly."""
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


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return {"wan": write_wan(root / "wan"), "cogvideox": write_cogvideox(root / "cogvideox")}


def build(name: str, folders, **kwargs):
    if name == "wan":
        return wan(str(folders["wan"]), **F32, max_sequence_length=16, **kwargs)
    return cogvideox(str(folders["cogvideox"]), **F32, vae_dtype="fp32", **kwargs)


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
        with torch.no_grad():  # the same LoRA in both (peft draws lora_A from the global generator)
            for i, (n, p) in enumerate(model.named_parameters()):
                if "lora_" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(i))
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
