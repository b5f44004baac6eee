"""`python -m vader.score`: one row per video, unreadable files reported without stopping."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from tests.conftest import ROOT
from vader.score import main, prompt_for


def write_video(path, color, frames=6):
    ramp = np.linspace(0, 1, 32)[None, :, None]
    frame = (np.ones((32, 32, 3)) * np.array(color) * ramp * 255).astype(np.uint8)
    iio.imwrite(path, np.stack([np.roll(frame, i, axis=1) for i in range(frames)]), fps=8)


@pytest.fixture
def clips(tmp_path):
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    write_video(folder / "a_red_car.mp4", (1.0, 0.1, 0.1))
    write_video(folder / "sub" / "gray_sky.mp4", (0.5, 0.5, 0.5))
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (folder / "notes.txt").write_text("ignored: not a video suffix")
    return folder


def test_scores_every_video_and_reports_the_broken_one(clips, tmp_path):
    out = tmp_path / "scores.csv"
    result = subprocess.run([sys.executable, "-m", "vader.score", str(clips), "reward_fn=colorfulness",
                             "--out", str(out), "--num-frames", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]  # one file failed
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"a_red_car.mp4", "gray_sky.mp4", "broken.mp4"}
    assert rows["broken.mp4"]["error"] and not rows["broken.mp4"]["reward"]
    assert float(rows["a_red_car.mp4"]["reward"]) > float(rows["gray_sky.mp4"]["reward"]) + 0.05
    assert rows["a_red_car.mp4"]["prompt"] == "a red car" and rows["a_red_car.mp4"]["frames"] == "4"
    assert "scored 2 of 3 videos" in result.stderr and "broken.mp4" in result.stderr


def test_json_output_prompt_table_and_composite(clips, tmp_path):
    table = tmp_path / "prompts.csv"
    table.write_text("file,prompt\na_red_car.mp4,a crimson automobile\n")
    out = tmp_path / "scores.json"
    code = main([str(clips / "a_red_car.mp4"), str(clips / "sub"), "reward_fn=composite",
                 "--out", str(out), "--prompts", str(table)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["prompt"] for r in rows] == ["a crimson automobile", "gray sky"]
    assert all({"reward", "colorfulness", "contrast"} <= set(r) for r in rows)


def test_bad_arguments(tmp_path, clips):
    with pytest.raises(FileNotFoundError, match="no such file"):
        main([str(tmp_path / "missing.mp4"), "reward_fn=colorfulness"])
    with pytest.raises(SystemExit):
        main(["reward_fn=colorfulness"])  # no videos given
    assert prompt_for(clips / "x-y_z.mp4", {}, None) == "x y z"
