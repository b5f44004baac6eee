"""Rewards that score only some of a video's frames (clip_score: `num_frames_scored` spread over
the clip; X-CLIP and VideoMAE: the model's frame count) have only those frames decoded in a
training step, with the same reward and the same gradients as decoding them all."""
from __future__ import annotations

import random

import pytest
import torch

from rewards.actpred import ActionPrediction
from rewards.clip_score import ClipScore
from rewards.colorfulness import Colorfulness
from rewards.xclip import XCLIPScore
from tests import tiny_clip
from tests import tiny_video_models as tvm
from vader.frames import frames_to_decode

# The tiny X-CLIP and VideoMAE take 4 frames; clip_score is set to score 3.
NAMES = ("clip_score", "xclip", "actpred")
TRAIN_OVERRIDES = {"clip_score": ["reward_fn.num_frames_scored=3"], "xclip": [],
                   "actpred": ["reward_fn.action=dancing ballet"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored_frames")
    return {"clip_score": tiny_clip.write_clip(root / "clip"),
            "xclip": tvm.write_xclip(root / "xclip"),
            "actpred": tvm.write_videomae(root / "videomae")}


def build(name: str, folders, **kwargs):
    if name == "clip_score":
        return ClipScore(pretrained=str(folders[name]), num_frames_scored=3, **kwargs)
    if name == "xclip":
        return XCLIPScore(pretrained=str(folders[name]), **kwargs)
    return ActionPrediction(pretrained=str(folders[name]), action="dancing ballet", **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 8, 9])
def test_the_scored_frames_alone_give_the_same_score(name, t, folders):
    """The promise `scored_frames` makes, for clips shorter than, as long as and longer than
    the frames scored."""
    reward = build(name, folders)
    frames = torch.rand(2, t, 3, 16, 16, generator=torch.Generator().manual_seed(t))
    index = reward.scored_frames(t)
    assert index.tolist() == sorted(set(index.tolist()))
    assert len(index) == min(t, 3 if name == "clip_score" else 4)
    whole, part = frames.clone().requires_grad_(), frames[:, index].clone().requires_grad_()
    prompts = ["a dog dancing ballet", "a red car"]
    expected, got = reward(whole, prompts)[0], reward(part, prompts)[0]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(part.grad, whole.grad[:, index], rtol=1e-5, atol=1e-8)
    unscored = torch.ones(t, dtype=torch.bool)
    unscored[index] = False
    assert (whole.grad[:, unscored] == 0).all()  # nothing else took part in the score


def test_frames_to_decode_narrows_the_frames_option(folders):
    reward = build("xclip", folders, frames=2)  # every 2nd of 16: 0, 2, ..., 14; X-CLIP takes 4
    assert frames_to_decode(reward, 16, random.Random(0)).tolist() == [0, 4, 10, 14]
    reward = build("xclip", folders)
    assert frames_to_decode(reward, 16, random.Random(0)).tolist() == [0, 5, 10, 15]
    assert frames_to_decode(reward, 4, random.Random(0)) is None  # all 4 scored: decode all
    # A reward without `scored_frames` gets its `frames` option, unchanged.
    assert frames_to_decode(Colorfulness(frames=3), 8, random.Random(0)).tolist() == [0, 3, 6]
    assert frames_to_decode(Colorfulness(), 8, random.Random(0)) is None


@pytest.mark.parametrize("name", NAMES)
def test_training_decodes_only_the_scored_frames(name, folders, make_trainer, monkeypatch):
    t = make_trainer(f"reward_fn={name}", f"reward_fn.pretrained={folders[name]}",
                     *TRAIN_OVERRIDES[name], "num_frames=8", "train_batch_size=2")
    t.setup()
    # peft starts LoRA B at zero, which gives LoRA A a zero gradient: perturb B, seeded.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in sorted(t.backbone.trainable_module().named_parameters()):
            if "lora_B" in key:
                p.normal_(0, 0.05, generator=g)
    prompts, seeds = ["a dog dancing ballet", "a red car"], [3, 4]

    def step() -> tuple[torch.Tensor, list[torch.Tensor], int]:
        decoded = []  # frames entering the VAE decoder in the forward pass
        hook = t.backbone.vae.decoder.register_forward_pre_hook(
            lambda module, args: decoded.append(args[0].shape[0]))
        try:
            loss, _, _ = t.algorithm.forward_loss(prompts, seeds, random.Random(0))
        finally:
            hook.remove()  # before backward, whose checkpoint recomputation decodes again
        return loss.detach(), torch.autograd.grad(loss, t.params), sum(decoded)

    loss, grads, decoded = step()
    decode = t.backbone.decode
    monkeypatch.setattr(t.backbone, "decode", lambda latents, frame_index=None: decode(latents))
    all_loss, all_grads, all_decoded = step()  # every frame decoded; the reward picks its own
    assert all_decoded == 2 * 8
    assert decoded == 2 * (3 if name == "clip_score" else 4)
    torch.testing.assert_close(loss, all_loss, rtol=1e-6, atol=0)
    assert any(g.abs().max() > 0 for g in all_grads)
    for got, expected in zip(grads, all_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
