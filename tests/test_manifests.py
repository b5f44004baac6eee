"""The video readers (vader/data/manifests.py) on small datasets the tests write in each published
layout: the expected clips and pairs, and errors that name the columns found."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vader.data import manifests
from vader.data.manifests import Clip, Pair


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_folder_reads_each_video_with_its_caption(tmp_path):
    for name in ("b.mp4", "a.webm", "notes.md"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_text("a cat jumps\n")
    assert manifests.folder(tmp_path) == [Clip(tmp_path / "a.webm", "a cat jumps"),
                                          Clip(tmp_path / "b.mp4", "")]  # no caption: the loader counts it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no videos"):
        manifests.folder(empty)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_manifest_in_every_table_format(tmp_path, suffix):
    rows = [{"path": "clips/1.mp4", "text": "a dog runs"}, {"path": "/abs/2.mp4", "text": " a car "}]
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        write_csv(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    clips = manifests.manifest(path, video_column="path", caption_column="text")
    assert clips == [Clip(tmp_path / "clips/1.mp4", "a dog runs"), Clip(Path("/abs/2.mp4"), "a car")]
    assert manifests.manifest(path, "path", "text", root="/data")[0].video == Path("/data/clips/1.mp4")


def test_a_manifest_without_the_columns_names_those_it_has(tmp_path):
    path = write_csv(tmp_path / "m.csv", [{"file": "1.mp4", "caption": "x"}])
    with pytest.raises(ValueError, match=r"no column 'video'.*\['caption', 'file'\]"):
        manifests.manifest(path)


def test_webvid_csv(tmp_path):
    path = write_csv(tmp_path / "results_2M_val.csv", [
        {"videoid": "1066", "name": "Aerial shot of a lake", "page_dir": "006001_006050",
         "duration": "PT00H00M16S", "contentUrl": "https://..."},
        {"videoid": "77", "name": "A red car", "page_dir": "", "duration": "", "contentUrl": ""}])
    clips = manifests.webvid(path, videos=tmp_path / "videos")
    assert clips == [Clip(tmp_path / "videos/006001_006050/1066.mp4", "Aerial shot of a lake"),
                     Clip(tmp_path / "videos/77.mp4", "A red car")]
    bad = write_csv(tmp_path / "bad.csv", [{"video_id": "1", "caption": "x"}])
    with pytest.raises(ValueError, match=r"no column 'videoid'.*\['caption', 'video_id'\]"):
        manifests.webvid(bad)


def test_msrvtt_one_clip_per_sentence_and_split(tmp_path):
    info = {"videos": [{"video_id": "video0", "split": "train", "start time": 137.7},
                       {"video_id": "video1", "split": "test"}],
            "sentences": [{"video_id": "video0", "caption": "a man sings", "sen_id": 0},
                          {"video_id": "video1", "caption": "a dog barks", "sen_id": 1},
                          {"video_id": "video0", "caption": "someone performs", "sen_id": 2}]}
    path = tmp_path / "videodatainfo.json"
    path.write_text(json.dumps(info))
    videos = tmp_path / "TrainValVideo"
    assert manifests.msrvtt(path, videos, split="train") == [
        Clip(videos / "video0.mp4", "a man sings"), Clip(videos / "video0.mp4", "someone performs")]
    assert len(manifests.msrvtt(path, videos)) == 3
    (tmp_path / "wrong.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"needs 'videos' and 'sentences'; found \['annotations'\]"):
        manifests.msrvtt(tmp_path / "wrong.json")


def test_activitynet_one_clip_per_sentence_with_its_timestamps(tmp_path):
    data = {"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                              "sentences": ["A young woman stands.", " She dances. "]}}
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(data))
    video = tmp_path / "v_QOlSCBRmfWY.mp4"
    assert manifests.activitynet(path) == [Clip(video, "A young woman stands.", 0.83, 19.86),
                                           Clip(video, "She dances.", 17.37, 60.81)]
    data["v_QOlSCBRmfWY"]["sentences"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="2 timestamps for 1 sentences"):
        manifests.activitynet(path)


def test_pairs_with_and_without_weights(tmp_path):
    path = write_csv(tmp_path / "pairs.csv", [
        {"caption": "a cat", "win": "w/1.mp4", "lose": "l/1.mp4", "margin": "0.7"}])
    assert manifests.pairs(path, "caption", "win", "lose", weight_column="margin") == [
        Pair("a cat", tmp_path / "w/1.mp4", tmp_path / "l/1.mp4", 0.7)]
    assert manifests.pairs(path, "caption", "win", "lose")[0].weight == 1.0
    with pytest.raises(ValueError, match=r"no column 'prompt'.*\['caption', 'lose', 'margin', 'win'\]"):
        manifests.pairs(path)


def write_videodpo(folder: Path, pairs: list[dict]) -> Path:
    """VideoDPO's layout as its writer leaves it: winner and loser clips side by side in
    metadata.json, pair.json indexing them (video1 the winner)."""
    folder.mkdir()
    videos = [{"basic": {"clip_duration": 1.6, "clip_path": path, "globalidx": 1},
               "misc": {"frame_caption": ["a cat"]}}
              for path in ("winvideos/000001.mp4", "losevideos/000001.mp4", "/abs/000002.mp4")]
    (folder / "metadata.json").write_text(json.dumps(videos))
    (folder / "pair.json").write_text(json.dumps(pairs))
    return folder


def test_videodpo_video1_is_chosen_and_dupbeta_weights(tmp_path):
    folder = write_videodpo(tmp_path / "vidpro", [
        {"video1": 0, "video2": 1, "label": 0, "frame_caption": "a cat", "score": 0.36},
        {"video1": 2, "video2": 0, "label": 0, "frame_caption": [" a dog ", "other"]}])
    assert manifests.videodpo(folder) == [
        Pair("a cat", folder / "winvideos/000001.mp4", folder / "losevideos/000001.mp4"),
        Pair("a dog", Path("/abs/000002.mp4"), folder / "winvideos/000001.mp4")]
    weighted = manifests.videodpo(folder, dupbeta=1.0)  # (0.72 / score) ** dupbeta, score 1 if absent
    assert [p.weight for p in weighted] == pytest.approx([2.0, 0.72])


def test_videodpo_errors_name_the_file_and_what_it_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no pair.json; found \['metadata.json'\]"):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "metadata.json").write_text("[]")
        manifests.videodpo(tmp_path / "a")
    folder = write_videodpo(tmp_path / "b", [{"video1": 0, "win": 1, "frame_caption": "x"}])
    with pytest.raises(ValueError, match=r"pair.json' pair 1 needs \['video1', 'video2', "
                                         r"'frame_caption'\]; found \['frame_caption', 'video1', 'win'\]"):
        manifests.videodpo(folder)
    (folder / "pair.json").write_text(json.dumps([{"video1": 0, "video2": 3, "frame_caption": "x"}]))
    with pytest.raises(ValueError, match="pair 1: video2 is 3; expected an index into metadata.json's 3"):
        manifests.videodpo(folder)
    (folder / "metadata.json").write_text(json.dumps([{"basic": {"path": "1.mp4"}}]))
    with pytest.raises(ValueError, match=r"video 1 has no basic.clip_path; its basic is \['path'\]"):
        manifests.videodpo(folder)


def test_pickapic_label_0_picks_the_chosen_and_drops_ties(tmp_path):
    path = write_csv(tmp_path / "prefs.csv", [
        {"caption": "a cat", "video_0": "a.mp4", "video_1": "b.mp4", "label_0": "1.0", "label_1": "0.0"},
        {"caption": "a dog", "video_0": "c.mp4", "video_1": "d.mp4", "label_0": "0.0", "label_1": "1.0"},
        {"caption": "a cow", "video_0": "e.mp4", "video_1": "f.mp4", "label_0": "0.5", "label_1": "0.5"}])
    assert manifests.pickapic(path) == [Pair("a cat", tmp_path / "a.mp4", tmp_path / "b.mp4"),
                                        Pair("a dog", tmp_path / "d.mp4", tmp_path / "c.mp4")]
    rows = [{"prompt": "a cat", "left": "a.mp4", "right": "b.mp4", "first_wins": 0},
            {"prompt": "a dog", "left": "c.mp4", "right": "d.mp4", "first_wins": 1},
            {"prompt": "a cow", "left": "e.mp4", "right": "f.mp4", "first_wins": 0.5}]
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    videos = Path("/videos")
    assert manifests.pickapic(tmp_path / "prefs.jsonl", "prompt", "left", "right", "first_wins",
                              root=videos) == [Pair("a cat", videos / "b.mp4", videos / "a.mp4"),
                                               Pair("a dog", videos / "c.mp4", videos / "d.mp4")]


@pytest.mark.parametrize("label", ["0.7", "", "yes"])
def test_pickapic_refuses_other_labels_and_names_missing_columns(tmp_path, label):
    path = write_csv(tmp_path / "prefs.csv", [
        {"caption": "a", "video_0": "a.mp4", "video_1": "b.mp4", "label_0": "1"},
        {"caption": "b", "video_0": "c.mp4", "video_1": "d.mp4", "label_0": label}])
    with pytest.raises(ValueError, match=f"row 2: label_0 is '{label}'; expected 1"):
        manifests.pickapic(path)
    with pytest.raises(ValueError,
                       match=r"no column 'jpg_0'.*\['caption', 'label_0', 'video_0', 'video_1'\]"):
        manifests.pickapic(path, first_column="jpg_0")


def test_missing_files_and_wrong_formats_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        manifests.manifest(tmp_path / "nope.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="extension '.txt'"):
        manifests.manifest(tmp_path / "m.txt")
