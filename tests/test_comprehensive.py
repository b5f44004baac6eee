"""reward_fn=comprehensive (issue 17, must-show 6): every temporal and quality reward composed from
its own YAML, pointed at tiny random models and weight-free flow; its value is the weighted sum of
the parts and every part is logged; reward gradients train on the parts with gradients, say which
they left out, and add the motion guard."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from rewards.composite import Composite
from rewards.motion_floor import MotionFloor
from tests.conftest import compose_cfg
from tests.test_caption_consistency import blip, sentence  # noqa: F401  (tiny model fixtures)
from tests.test_flow_rewards import clip_of
from tests.test_identity_lock import dinov2  # noqa: F401
from tests.test_rewards_clip import folders  # noqa: F401

WITHOUT_GRADIENTS = ["flow_smoothness", "caption_consistency", "dynamic_degree"]


@pytest.fixture
def tiny(dinov2, blip, sentence, folders):  # noqa: F811
    """Overrides pointing every part at a tiny model or weight-free flow."""
    part = "reward_fn.parts.{}.reward.{}={}".format
    out = [part("t_lpips", "net_weights", "random")]
    out += [part(name, "flow", "farneback") for name in
            ("t_lpips", "structure_constancy", "flow_smoothness", "dynamic_degree")]
    out += [part(name, "pretrained", dinov2) for name in ("identity_lock", "framing", "novelty_after_k")]
    out += [part("caption_consistency", "pretrained", blip),
            part("caption_consistency", "sentence_model", sentence),
            part("clip_vid", "pretrained", folders["clip"]),
            part("aesthetic", "pretrained", folders["clip"]),
            part("aesthetic", "head_repo", folders["clip"]), part("aesthetic", "head_file", "head.pth")]
    return ["reward_fn=comprehensive", *out]


def test_value_is_the_weighted_sum_of_every_part_and_each_is_logged(tiny):
    node = compose_cfg(*tiny).reward_fn
    reward = instantiate(node)
    assert isinstance(reward, Composite) and len(reward.parts) == 11  # all but seam (no windows)
    assert sorted(reward.without_gradients) == sorted(WITHOUT_GRADIENTS) and not reward.differentiable
    assert not reward.maximised_by_still_video  # dynamic_degree's weight tips it (docs/rewards.md)
    frames = torch.cat([clip_of(16), clip_of(16, stride=3)])
    prompts = ["bikes on a street", "bikes, faster"]
    value, info = reward(frames, prompts)
    expected = torch.zeros(2)
    for name, spec in node.parts.items():
        part = instantiate(spec.reward)  # alone, built again from the same settings
        seen = frames if part.frames == "all" else frames[:, ::part.frames]
        alone = part(seen, prompts)[0].float()
        assert info[name].item() == pytest.approx(alone.mean().item(), abs=1e-5), name
        expected += spec.weight * alone
    torch.testing.assert_close(value.float(), expected, atol=1e-5, rtol=1e-5)


def test_reward_gradients_train_the_parts_with_gradients_under_the_motion_guard(tiny, make_trainer, capsys):
    trainer = make_trainer(*tiny, "num_frames=8", "height=32", "width=32", "num_steps=1",
                           "eval_rewards=[]")
    out = capsys.readouterr().out
    assert "left out, having none: " + ", ".join(WITHOUT_GRADIENTS) in out
    assert isinstance(trainer.reward, MotionFloor)
    kept = trainer.reward.unguarded
    assert sorted(kept.parts) == sorted(set(compose_cfg(*tiny).reward_fn.parts) - set(WITHOUT_GRADIENTS))
    assert kept.maximised_by_still_video  # half its weight now: t_lpips, structure, identity, ...
    trainer.setup()
    assert "motion guard on: training on" in capsys.readouterr().out
    record = trainer.train_step()
    assert all(f"reward_info/{name}" in record for name in kept.parts)
    assert torch.isfinite(torch.tensor(record["loss"])) and record["grad_norm"] > 0
