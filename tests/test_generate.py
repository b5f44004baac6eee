"""`python -m vader.generate`: videos from a trained LoRA (or the base model) with a gallery, short
or long (windows), without evaluating; and training with `long.*` on a long video."""
from __future__ import annotations

import pytest

from tests.conftest import TINY
from vader.generate import main, read_prompts, split_args
import imageio.v3 as iio


def test_own_keys_are_split_from_the_training_overrides(tmp_path):
    own, rest = split_args(["prompts=[a, b]", "seeds=2", "backbone=tiny", "long.window=4"])
    assert own == {"prompts": "[a, b]", "seeds": "2"} and rest == ["backbone=tiny", "long.window=4"]
    assert read_prompts("[a red circle, a blue square]") == ["a red circle", "a blue square"]
    file = tmp_path / "p.txt"
    file.write_text("a cat\n\n a dog \n")
    assert read_prompts(str(file)) == ["a cat", "a dog"]
    with pytest.raises(FileNotFoundError, match="one prompt a line"):
        read_prompts(str(tmp_path / "none.txt"))
    with pytest.raises(ValueError, match="give prompts"):
        read_prompts(None)


def test_generates_with_a_trained_lora_the_videos_evaluation_made(make_trainer, tmp_path):
    trainer = make_trainer(*TINY, "num_steps=2", run_dir=tmp_path / "run")
    trainer.setup()
    trainer.train()
    lora = tmp_path / "run" / "checkpoints" / "step_000002"
    prompt = trainer.prompts.val[0]
    out = tmp_path / "gen"
    page = main([*TINY, f"lora_path={lora}", f"prompts=[{prompt}]", f"out={out}", "seeds=1"])
    assert page == out / "index.html" and "generated: step_000002" in page.read_text()
    videos = sorted((out / "videos").iterdir())
    assert len(videos) == 1
    # The evaluation's tuned video of the same prompt and first seed, frame for frame (gif: 8 bits).
    evaluated = sorted((tmp_path / "run" / "eval" / "videos" / "tuned").glob("000_*"))[0]
    assert (iio.imread(videos[0]) == iio.imread(evaluated)).all()


def test_generates_a_long_video_in_windows_from_the_base_model(tmp_path):
    out = tmp_path / "long"
    main([*TINY, "num_frames=10", "long.window=4", "long.overlap=1", "prompts=[a cat]", f"out={out}"])
    (video,) = (out / "videos").iterdir()
    assert iio.imread(video).shape[0] == 10
    assert "window" in (out / "index.html").read_text()


def test_reward_gradients_train_on_long_videos_and_other_algorithms_refuse(make_trainer, tmp_path):
    trainer = make_trainer("num_frames=10", "long.window=4", "long.overlap=1", run_dir=tmp_path / "r")
    trainer.setup()
    summary = trainer.train()["summary"]
    assert summary["settings"]["window"] == 4 and summary["settings"]["num_frames"] == 10
    # Each video's seam score at the windows' boundaries, in every evaluation (window 4, overlap 1).
    assert "seam" in summary["rewards"] and "seam" in trainer.metric_names
    assert trainer.rewards["seam"].seams(10) == [3, 4, 6, 7]  # windows (0, 4), (3, 7), (6, 10)
    rows = (tmp_path / "r" / "eval" / "metrics.csv").read_text().splitlines()
    assert "reward/seam" in rows[0] and len(rows) == 1 + 2 * len(trainer.prompts.val) * trainer.cfg.num_val_seeds
    with pytest.raises(ValueError, match="long.window=4: SFT does not train on videos made that way"):
        make_trainer("algorithm=sft", "long.window=4")
    with pytest.raises(ValueError, match="shorter than one window"):
        make_trainer("long.window=8")  # TINY's 4 frames
