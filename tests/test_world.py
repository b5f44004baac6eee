"""The shapes world: grammar and splits, the renderer, the dataset on disk, the word tokenizer
and the world backbone's weight files. The judge and the world rewards: test_world_judge.py;
the pretrained model end to end: test_world_model.py."""
from __future__ import annotations

import itertools

import pytest
import torch

from backbones.world import build_parts, load_parts, save_parts, word_tokenizer
from vader.data.prompts import world as world_prompts
from vader.world.grammar import (COLOURS, MOTIONS, SHAPES, Scene, heldout_sample, heldout_triple,
                                 parse, scenes, vocabulary)
from vader.world.render import render, render_batch


def test_every_prompt_parses_back_to_its_scene():
    for scene in scenes():
        assert parse(scene.prompt) == scene
        assert parse("  " + scene.prompt.upper() + " ") == scene


@pytest.mark.parametrize("bad", ["a dog running on the beach", "a red circle moves left",
                                 "a red hexagon moves left on a black background",
                                 "a red circle moves sideways on a black background",
                                 "a red circle moves left on a red background", ""])
def test_a_prompt_outside_the_grammar_is_refused_with_the_grammar(bad):
    with pytest.raises(ValueError, match="shapes world.*<colour> <shape> <motion>"):
        parse(bad)


def test_splits_hold_out_combinations_whose_parts_are_all_seen_in_training():
    train, held = scenes("train"), scenes("heldout")
    assert (len(train), len(held), len(scenes())) == (270, 54, 324)
    assert not {s.prompt for s in train} & {s.prompt for s in held}
    triples = lambda ss: {(s.colour, s.shape, s.motion) for s in ss}  # noqa: E731
    assert len(triples(held)) == 18 and not triples(held) & triples(train)
    # Every pair of attributes of a held-out triple is seen in training.
    for c, s, m in triples(held):
        assert any(t[:2] == (c, s) for t in triples(train))
        assert any((t[0], t[2]) == (c, m) for t in triples(train))
        assert any(t[1:] == (s, m) for t in triples(train))
    sample = heldout_sample()
    assert len(sample) == 18 and all(heldout_triple(s.colour, s.shape, s.motion) for s in sample)
    assert {(s.shape, s.background) for s in sample} == set(itertools.product(SHAPES, ["black", "gray", "white"]))
    source = world_prompts()
    assert len(source.train) == 270 and len(source.val) == 18
    assert len(world_prompts("all").val) == 54


def test_render_is_a_pure_function_of_prompt_and_seed():
    prompt = "a red circle moves left on a black background"
    a, b = render(prompt, 3), render(prompt, 3)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(a, render(prompt, 4))
    assert 0 <= a.min() and a.max() <= 1
    assert render(prompt, 3, num_frames=16, height=64, width=48).shape == (16, 3, 64, 48)


def _centroid(video: torch.Tensor, background) -> torch.Tensor:
    weight = (video - torch.tensor(background)[None, :, None, None]).abs().sum(1)  # (T, H, W)
    ys, xs = torch.meshgrid(torch.arange(video.shape[2]), torch.arange(video.shape[3]), indexing="ij")
    total = weight.flatten(1).sum(1)
    return torch.stack([(weight * xs).flatten(1).sum(1) / total, (weight * ys).flatten(1).sum(1) / total], 1)


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_rendered_motion_is_the_prompts(motion):
    from vader.world.grammar import BACKGROUNDS
    for seed in range(5):
        scene = Scene("red", "square", motion, "black")
        video = render(scene, seed)
        path = _centroid(video, BACKGROUNDS["black"])
        dx, dy = (path[-1] - path[0]).tolist()
        area = (video - torch.tensor(BACKGROUNDS["black"])[None, :, None, None]).abs().sum(1).flatten(1).sum(1)
        expect = {"left": dx < -8, "right": dx > 8, "up": dy < -8, "down": dy > 8,
                  "still": abs(dx) < 0.5 and abs(dy) < 0.5, "grows": float(area[-1] / area[0]) > 2.5}
        assert expect[motion], (motion, seed, dx, dy, area[[0, -1]])
        # The object stays whole inside the frame: the border shows only background.
        border = torch.cat([video[..., 0, :], video[..., -1, :], video[..., 0], video[..., -1]], -1)
        assert torch.allclose(border, torch.tensor(BACKGROUNDS["black"])[None, :, None].expand_as(border))


def test_the_rendered_dataset_reads_back_exactly(tmp_path):
    from vader.data.clips import FrameRule, read_clip
    from vader.data.manifests import manifest
    from vader.world.dataset import write_dataset
    path = write_dataset(tmp_path / "shapes", 5, split="train", seed=2)
    clips = manifest(path)
    assert len(clips) == 5 and all(parse(c.caption) in scenes("train") for c in clips)
    rule = FrameRule(num_frames=8, height=32, width=32, stride=1, fps=None, window="central", short="skip")
    for i, clip in enumerate(clips):
        frames = (read_clip(clip.video, rule) + 1) / 2  # [-1, 1] -> [0, 1]
        expected = render(clip.caption, 2 * 1_000_003 + i)
        assert torch.equal((frames * 255).round(), (expected * 255).round())


def test_word_tokenizer_gives_each_world_word_its_own_token():
    tok = word_tokenizer(vocabulary(), 16)
    ids = tok(["a red circle moves left on a black background"], padding="max_length",
              max_length=16).input_ids[0]
    assert ids[0] == tok.bos_token_id and ids[10] == tok.eos_token_id and ids[11:] == [tok.pad_token_id] * 5
    assert len({tok.convert_tokens_to_ids(w) for w in vocabulary()}) == len(vocabulary())
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]  # guidance's empty prompt
    for prompt, unknown in (("a purple circle", "purple"), ("A red circle, moving", ",")):
        with pytest.raises(ValueError, match=f"does not know .*'{unknown}'.*prompt_fn=world"):
            tok(["a red circle", prompt])
    with pytest.raises(ValueError, match="<unk>"):
        tok("a <unk> circle")


def test_world_weights_round_trip_and_a_missing_folder_says_how_to_make_one(tmp_path):
    config = {"channels": [32, 64], "vae_channels": [16, 32], "text_dim": 32, "max_prompt_tokens": 16,
              "vocabulary": vocabulary(), "scaling_factor": 0.7}
    parts = build_parts(config, seed=3)
    save_parts({n: m.state_dict() for n, m in parts.items() if n != "tokenizer"}, config, tmp_path / "w")
    loaded, again = load_parts(tmp_path / "w")
    assert again == config and loaded["vae"].config.scaling_factor == 0.7
    for name in ("unet", "vae", "text_encoder"):
        for (k, v), (k2, v2) in zip(parts[name].state_dict().items(), loaded[name].state_dict().items()):
            assert k == k2 and torch.equal(v.half().float(), v2)  # stored in float16
    with pytest.raises(FileNotFoundError, match="vader.world pretrain --out"):
        load_parts(tmp_path / "nothing")


def test_pretraining_writes_a_loadable_model_and_continuing_it_records_both_commands(tmp_path):
    import json

    from vader.world.pretrain import Settings, pretrain
    folder = tmp_path / "w"
    pretrain(folder, Settings(vae_steps=2, steps=2, vae_batch=8, batch=2))
    with pytest.raises(ValueError, match="--vae-steps 0"):
        pretrain(folder, Settings(vae_steps=2, steps=1, batch=2), init=folder)
    config = pretrain(folder, Settings(vae_steps=0, steps=1, batch=2, min_timestep=900), init=folder)
    first, second = [stage["command"] for stage in config["made"]["stages"]]
    assert config["made"]["command"] == f"{first} && {second}"
    assert f"--init {folder} --vae-steps 0 --steps 1" in second and "--init" not in first
    assert "--min-timestep 900" in second and "--min-timestep" not in first
    saved = json.loads((folder / "config.json").read_text())  # strict JSON: no NaN
    assert saved["made"]["stages"][1]["final_vae_loss"] is None
    assert saved["prediction_type"] == "v_prediction"
    parts, _ = load_parts(folder)
    assert parts["vae"].config.scaling_factor == saved["scaling_factor"] != 1.0


def test_min_timestep_keeps_the_draws_uniform_over_the_noisiest_steps():
    from vader.world.pretrain import noisiest
    every = torch.arange(1000)
    assert torch.equal(noisiest(every, 0, 1000), every)
    counts = torch.bincount(noisiest(every, 900, 1000), minlength=1000)
    assert counts[:900].sum() == 0 and bool((counts[900:] == 10).all())


def test_the_motion_probe_measures_drift_in_the_prompts_direction():
    """The probe's yardstick on the world's own renders: the mean video of 64 seeds drifts the
    way the prompt says by about the 10-14 pixels clips travel, and not at all when still."""
    from benchmarks.world_motion_probe import centroid_drift
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
    for motion, (sx, sy) in expected.items():
        prompt = Scene("red", "circle", motion, "black").prompt
        mean = render_batch([prompt] * 64, list(range(64)), 8, 32, 32).float().mean(0)
        dx, dy = centroid_drift(mean, "black")
        for drift, sign in ((dx, sx), (dy, sy)):
            assert (10 < drift * sign < 14) if sign else abs(drift) < 0.5, (motion, dx, dy)
