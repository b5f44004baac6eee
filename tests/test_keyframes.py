"""Keyframe-then-inbetween generation (issue 18, must-show 4; vader/sampling/keyframes.py): the
keyframes come out of the second pass exactly as the keyframe pass made them, the in-betweens are
sampled at the lower guidance, and a reward-gradient step trains through the in-between pass."""
from __future__ import annotations

import pytest
import torch

import vader.sampling.differentiable as differentiable
from backbones.tiny import tiny
from vader.sampling.differentiable import make_noise, sample
from vader.sampling.keyframes import Keyframes
from vader.sampling.windows import Windows

PROMPTS = ["a red balloon", "a green car"]


def test_keyframes_are_every_interval_and_the_last_frame():
    assert Keyframes(4).indices(10) == [0, 4, 8, 9]
    assert Keyframes(3).indices(10) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="keyframe_interval=1"):
        Keyframes(1)
    with pytest.raises(ValueError, match="at least 3 latent frames"):
        Keyframes(2).indices(2)


@pytest.fixture(scope="module")
def backbone():
    return tiny(seed=0)


@pytest.mark.parametrize("windows", [None, Windows(4, 1)])
def test_keyframes_are_kept_exactly_and_the_inbetweens_use_the_lower_guidance(backbone, windows, monkeypatch):
    """The keyframe latents of the result are the keyframe pass's, bit for bit; decoded, the frames
    differ from the keyframe pass's decoded frames by at most 1e-6 (the tiny VAE decodes frame by
    frame). Every network call of the first pass (on the 4 keyframes) is at guidance 7, every call
    of the second (on all 10 frames, or its windows) at 3."""
    model = backbone.trainable_module()
    noise = make_noise(backbone.latent_shape(2, 10, 16, 16), [3, 4])
    calls = []
    original = differentiable.guided_prediction

    def counting(backbone_, net, x_in, t, cond, guidance_scale, batch_cfg=True):
        calls.append((x_in.shape[2], guidance_scale))
        return original(backbone_, net, x_in, t, cond, guidance_scale, batch_cfg)
    monkeypatch.setattr(differentiable, "guided_prediction", counting)
    keyframes = Keyframes(3, guidance_scale=7.0, inbetween_guidance_scale=3.0)
    index = keyframes.indices(10)
    with torch.no_grad():
        video = sample(backbone, model, PROMPTS, noise, num_inference_steps=4, guidance_scale=5.0,
                       windows=windows, keyframes=keyframes)
        calls_of_both = list(calls)
        calls.clear()
        keys = sample(backbone, model, PROMPTS, noise[:, :, index], num_inference_steps=4,
                      guidance_scale=7.0)
    assert torch.equal(video[:, :, index], keys)
    between = [i for i in range(10) if i not in index]
    assert (video[:, :, between] - noise[:, :, between]).abs().max() > 0.1  # they were denoised
    with torch.no_grad():
        decoded, decoded_keys = backbone.decode(video), backbone.decode(keys)
    assert (decoded[:, index] - decoded_keys).abs().max() <= 1e-6
    first, second = calls_of_both[:4], calls_of_both[4:]
    assert first == [(4, 7.0)] * 4
    window = 10 if windows is None else 4
    assert second and all(c == (window, 3.0) for c in second)
    assert len(second) == 4 * (1 if windows is None else len(windows.spans(10)))


def test_the_inbetweens_follow_their_keyframes(backbone):
    """Other keyframes, other in-betweens: the second pass reads the keyframes it is given."""
    model = backbone.trainable_module()
    noise = make_noise(backbone.latent_shape(1, 7, 16, 16), [5])
    with torch.no_grad():
        a = sample(backbone, model, PROMPTS[:1], noise, num_inference_steps=3, keyframes=Keyframes(3))
        b = sample(backbone, model, PROMPTS[:1], noise, num_inference_steps=3,
                   keyframes=Keyframes(3, guidance_scale=1.0))
    assert (a[:, :, [0, 3, 6]] - b[:, :, [0, 3, 6]]).abs().max() > 1e-3
    assert (a[:, :, [1, 2, 4, 5]] - b[:, :, [1, 2, 4, 5]]).abs().max() > 1e-4


def test_reward_gradients_train_through_the_inbetween_pass(make_trainer, tmp_path):
    trainer = make_trainer("num_frames=5", "long.keyframe_interval=2", "long.keyframe_guidance=7",
                           "long.inbetween_guidance=3", run_dir=tmp_path / "r")
    trainer.setup()
    result = trainer.train()
    assert result["summary"]["settings"]["keyframe_interval"] == 2
    assert result["summary"]["settings"]["inbetween_guidance"] == 3.0
    lora = trainer.backbone.lora_state_dict()
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # it learned
    with pytest.raises(ValueError, match="long.keyframe_interval=2: GRPO does not train on videos made"):
        make_trainer("algorithm=grpo", "long.keyframe_interval=2")
    with pytest.raises(ValueError, match="long.keyframe_interval=1"):
        make_trainer("long.keyframe_interval=1")
