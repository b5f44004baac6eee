"""The data stream SFT and DPO learn from (vader/data/loader.py, stream.py, cache.py): bad files
skipped and counted by reason, a dataset where nothing loads stopped with its first failures,
the latent cache, and an order that is a function of (seed, position)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.video_data import square_video, write_clip_folder
from vader.data.clips import FrameRule
from vader.data.loader import LoaderSettings, StepBatches
from vader.data.manifests import Clip
from vader.data.order import item_at
from vader.io.video import save_video


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        writer.writerows(rows)
    return path


def bad_dataset(root: Path) -> Path:
    """Two good clips and one of each kind of bad sample, in a manifest."""
    root.mkdir()
    for name in ("good1", "good2", "nocaption"):
        save_video(square_video("red", frames=8), root / f"{name}.mp4", fps=8)
    save_video(square_video("blue", frames=2), root / "short.mp4", fps=8)  # 4 frames are needed
    (root / "empty.mp4").write_bytes(b"")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return write_manifest(root / "train.csv", [
        ("good1.mp4", "a red square"), ("good2.mp4", "a red square"), ("nocaption.mp4", "  "),
        ("short.mp4", "a blue square"), ("empty.mp4", "x"), ("corrupt.mp4", "x"),
        ("missing.mp4", "x")])


def test_bad_files_are_skipped_counted_by_reason_and_in_the_summary(make_trainer, tmp_path,
                                                                     capsys):
    manifest = bad_dataset(tmp_path / "data")
    # One step of 7 samples: each of the 7 items exactly once (the stream's first epoch).
    trainer = make_trainer("algorithm=sft", "dataset=manifest", f"dataset.path={manifest}",
                           "num_steps=1", "train_batch_size=7", "data.num_workers=2",
                           "data.short_videos=skip")
    trainer.setup()
    trainer.train()  # finishes
    expected = {"missing": 1, "empty_file": 1, "undecodable": 1, "too_short": 1,
                "empty_caption": 1, "missing_image": 0, "bad_image": 0}
    summary = json.loads((trainer.run_dir / "eval" / "summary.json").read_text())
    assert summary["training"]["data"]["skipped"] == expected
    assert summary["training"]["data"]["loaded"] == 2
    record = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").open()][0]
    assert {k: record[f"skipped/{k}"] for k in expected} == expected
    assert record["samples"] == 2
    err = capsys.readouterr().err
    for reason in (r for r, n in expected.items() if n):
        assert f"{reason} (" in err or reason in err, reason


def test_a_dataset_where_everything_fails_stops_naming_the_first_failures(make_trainer, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "empty.mp4").write_bytes(b"")
    manifest = write_manifest(root / "train.csv", [("missing.mp4", "x"), ("empty.mp4", "x")])
    trainer = make_trainer("algorithm=sft", "dataset=manifest", f"dataset.path={manifest}",
                           "num_steps=3", "data.num_workers=0")
    trainer.setup()
    with pytest.raises(ValueError, match=r"no sample of the dataset could be used.*missing\.mp4"
                                         r".*empty\.mp4"):
        trainer.train()
    assert not (trainer.run_dir / "checkpoints").exists()  # it stopped on the second step


def stream_for(tmp_path, items, rule, cache=True, make=None):
    """A TrainingData over `items` on the tiny backbone, one process, batch 2; each clip's
    window drawn once, with or without the cache, so the two read the same frames."""
    from accelerate import Accelerator

    from backbones.tiny import tiny
    from vader.data.stream import TrainingData

    backbone = make or tiny()
    settings = LoaderSettings(rule, seed=0, cache_root=tmp_path / "cache" if cache else None,
                              encoder="tiny-0", fixed_windows=True)
    return TrainingData(items, settings, backbone, Accelerator(cpu=True), batch=2,
                        micro_steps=1, num_workers=0), backbone


def test_the_latent_cache_encodes_once_and_is_rebuilt_when_a_setting_changes(tmp_path):
    folder = write_clip_folder(tmp_path / "clips", ["red", "green", "blue", "yellow"])
    items = [Clip(p, "a square") for p in sorted(folder.glob("*.mp4"))]
    rule = FrameRule(num_frames=4, height=16, width=16, window="random")
    stream, backbone = stream_for(tmp_path, items, rule)
    first = [stream.step(s)[0] for s in range(2)]  # epoch 1: 4 items, 2 a step
    assert stream.encoded == 4
    second = [stream.step(s)[0] for s in range(2, 4)]  # epoch 2: all from the cache
    assert stream.encoded == 4
    # The same clip gives the same latents from the cache as when it was encoded.
    latents = {}
    for steps in first:
        for s in steps[0]:
            latents[item_key(stream, s.position)] = s.videos[0]
    for steps in second:
        for s in steps[0]:
            torch.testing.assert_close(s.videos[0], latents[item_key(stream, s.position)],
                                       rtol=0, atol=0)
    # ... and equal fresh ones, encoded without a cache.
    fresh, _ = stream_for(tmp_path, items, rule, cache=False, make=backbone)
    for s in fresh.step(0)[0][0]:
        torch.testing.assert_close(s.videos[0], latents[item_key(fresh, s.position)],
                                   rtol=0, atol=1e-6)
    # A changed frame count or size encodes again, into the same folder.
    for changed in (FrameRule(num_frames=6, height=16, width=16),
                    FrameRule(num_frames=4, height=24, width=24)):
        again, _ = stream_for(tmp_path, items, changed, make=backbone)
        again.step(0)
        assert again.encoded == 2


def item_key(stream, position: int) -> int:
    return item_at(len(stream.items), stream.settings.seed, position)


def test_text_embeddings_are_cached_and_batch_independent(tmp_path):
    folder = write_clip_folder(tmp_path / "clips", ["red"])
    stream, backbone = stream_for(tmp_path, [Clip(next(folder.glob("*.mp4")), "x")],
                                  FrameRule(4, 16, 16))
    calls = []
    real = backbone.encode_prompts
    backbone.encode_prompts = lambda p: calls.append(list(p)) or real(p)
    a = stream.embed(["a red square", "a blue square"])
    b = stream.embed(["a blue square"])
    assert calls == [["a red square"], ["a blue square"]]  # each once, on its own
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)
    stream.text.clear()  # a new run: from the disk cache, encoding nothing
    stream.embed(["a red square"])
    assert len(calls) == 2


def test_each_process_reads_its_own_shard_and_together_they_read_one_process_batches():
    one = StepBatches(10, seed=3, start_step=0, micro_steps=2, batch=4)
    two = [StepBatches(10, seed=3, start_step=0, micro_steps=2, batch=2, rank=r, world=2)
           for r in (0, 1)]
    it1, its = iter(one), [iter(s) for s in two]
    for _ in range(6):  # 3 steps x 2 micro-steps, past the end of the first epoch
        together = next(its[0]) + next(its[1])
        assert together == next(it1)
    # Every item once per epoch, in an order that depends on the seed.
    epoch = [item_at(10, 3, g) for g in range(10)]
    assert sorted(epoch) == list(range(10))
    assert epoch != [item_at(10, 4, g) for g in range(10)]
    # A stream started at step 2 (a resume) continues where step 2 of a full one is.
    full, resumed = iter(StepBatches(10, 3, 0, 2, 4)), iter(StepBatches(10, 3, 2, 2, 4))
    for _ in range(4):
        next(full)
    assert next(full) == next(resumed)
