"""Where training videos come from: (video, caption) clips and (prompt, chosen, rejected) pairs,
read from the layouts users bring. Readers list paths and text only; decoding, frame sampling and
the accounting of unreadable files belong to the loader that consumes them.

    folder(path)                       videos, each with a same-named .txt caption beside it
    manifest(path, video_column=..., caption_column=...)   CSV, JSON (a list) or JSONL
    webvid(path, videos=...)           WebVid's CSV: `videoid`, `name` (the caption), `page_dir`
    msrvtt(path, videos=...)           MSR-VTT's videodatainfo.json: `videos` + `sentences`
    activitynet(path, videos=...)      ActivityNet Captions: `timestamps` + `sentences` per video
    pairs(path, prompt_column=..., chosen_column=..., rejected_column=...)   preference pairs
    videodpo(path)                     VideoDPO's folder: metadata.json + pair.json, video1 wins
    pickapic(path, label_column=...)   Pick-a-Pic-style rows: `caption`, `label_0`, two videos
    image_video(path, ...)             (image, video, optional caption), a table or a folder

Relative video paths are taken from the file's own folder unless `root` (or `videos`) says
otherwise. A file without the columns asked for is refused with the columns it has.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vader.data.image_prompts import IMAGE_SUFFIXES
from vader.io.tables import TABLE_SUFFIXES, read_rows

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


@dataclass(frozen=True)
class Clip:
    """A video and its caption; `start`/`end` (seconds) when the caption covers only part;
    `image`, an image-to-video sample's conditioning image (None: the clip's first frame)."""

    video: Path
    caption: str
    start: float | None = None
    end: float | None = None
    image: Path | None = None


@dataclass(frozen=True)
class Pair:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) video."""

    prompt: str
    chosen: Path
    rejected: Path
    weight: float = 1.0


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} '{path}' does not exist")
    return p


def _table(path: str | Path, what: str, columns: list[str]) -> list[dict]:
    p = _existing(path, what)
    if p.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"{what} '{path}' has extension '{p.suffix}'; expected .csv, .json or .jsonl")
    rows = read_rows(p, str(path), what)
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{what} '{path}' row {i} is {row!r}; expected an object with the "
                             f"columns {columns}")
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{what} '{path}' has no column {missing[0]!r} (row {i}); the columns "
                             f"found are {sorted(row)}: name the right ones with the reader's "
                             "*_column settings")
    return rows


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def folder(path: str | Path) -> list[Clip]:
    """Every video file in `path` (sorted, not recursive) with the text of the .txt file of the
    same name as its caption ("" where there is none: the loader counts empty captions)."""
    p = _existing(path, "video folder")
    if not p.is_dir():
        raise ValueError(f"video folder '{path}' is a file; give a folder of videos with .txt captions")
    clips = []
    for video in sorted(v for v in p.iterdir() if v.suffix.lower() in VIDEO_SUFFIXES):
        caption = video.with_suffix(".txt")
        clips.append(Clip(video, caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""))
    if not clips:
        raise ValueError(f"video folder '{path}' holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return clips


def manifest(path: str | Path, video_column: str = "video", caption_column: str = "caption",
             root: str | Path | None = None) -> list[Clip]:
    """One clip per row of a CSV, JSON or JSONL file."""
    base = Path(root) if root is not None else Path(path).parent
    rows = _table(path, "video manifest", [video_column, caption_column])
    return [Clip(base / _text(r[video_column]), _text(r[caption_column])) for r in rows]


def webvid(path: str | Path, videos: str | Path | None = None) -> list[Clip]:
    """WebVid's metadata CSV (`videoid`, `name` = the caption, `page_dir`, ...). A video is
    `<videos>/<page_dir>/<videoid>.mp4` where the CSV has `page_dir` (the layout WebVid's own
    download script writes), else `<videos>/<videoid>.mp4`."""
    base = Path(videos) if videos is not None else Path(path).parent
    rows = _table(path, "WebVid CSV", ["videoid", "name"])
    return [Clip(base / _text(r.get("page_dir")) / f"{_text(r['videoid'])}.mp4"
                 if _text(r.get("page_dir")) else base / f"{_text(r['videoid'])}.mp4",
                 _text(r["name"])) for r in rows]


def msrvtt(path: str | Path, videos: str | Path | None = None,
           split: str | None = None) -> list[Clip]:
    """MSR-VTT's `videodatainfo.json`: one clip per sentence (`sentences[].caption` of
    `video_id`), the video `<videos>/<video_id>.mp4`; `split` ("train", "validate", "test")
    keeps the videos of that split."""
    p = _existing(path, "MSR-VTT file")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"videos", "sentences"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"MSR-VTT file '{path}' needs 'videos' and 'sentences'; found {found}")
    base = Path(videos) if videos is not None else p.parent
    keep = {v["video_id"] for v in data["videos"] if split is None or v.get("split") == split}
    return [Clip(base / f"{s['video_id']}.mp4", _text(s["caption"]))
            for s in data["sentences"] if s["video_id"] in keep]


def activitynet(path: str | Path, videos: str | Path | None = None) -> list[Clip]:
    """ActivityNet Captions (`train.json`, `val_1.json`, ...): `{video id: {"timestamps":
    [[start, end], ...], "sentences": [...]}}`, one clip per sentence covering its
    timestamps, the video `<videos>/<video id>.mp4`."""
    p = _existing(path, "ActivityNet Captions file")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"ActivityNet Captions file '{path}' holds a JSON {type(data).__name__}; "
                         "expected an object keyed by video id")
    base = Path(videos) if videos is not None else p.parent
    clips = []
    for video_id, entry in data.items():
        if not isinstance(entry, dict) or not {"timestamps", "sentences"} <= set(entry):
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"ActivityNet Captions file '{path}', video {video_id!r}: needs "
                             f"'timestamps' and 'sentences'; found {found}")
        if len(entry["timestamps"]) != len(entry["sentences"]):
            raise ValueError(f"ActivityNet Captions file '{path}', video {video_id!r}: "
                             f"{len(entry['timestamps'])} timestamps for "
                             f"{len(entry['sentences'])} sentences")
        for (start, end), sentence in zip(entry["timestamps"], entry["sentences"]):
            clips.append(Clip(base / f"{video_id}.mp4", _text(sentence), float(start), float(end)))
    return clips


def pairs(path: str | Path, prompt_column: str = "prompt", chosen_column: str = "chosen",
          rejected_column: str = "rejected", weight_column: str | None = None,
          root: str | Path | None = None) -> list[Pair]:
    """One preference pair per row of a CSV, JSON or JSONL file; `weight_column` (optional) a
    per-pair weight such as a score margin."""
    base = Path(root) if root is not None else Path(path).parent
    columns = [prompt_column, chosen_column, rejected_column, *([weight_column] if weight_column else [])]
    rows = _table(path, "pairs file", columns)
    return [Pair(_text(r[prompt_column]), base / _text(r[chosen_column]),
                 base / _text(r[rejected_column]),
                 float(r[weight_column]) if weight_column else 1.0) for r in rows]


def _json_list(p: Path, what: str, item: str, keys: list[str]) -> list[dict]:
    try:
        rows = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} '{p}' is not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{what} '{p}' holds a JSON {type(rows).__name__}; expected a list of "
                         f"{item}s")
    for i, row in enumerate(rows, 1):
        found = sorted(row) if isinstance(row, dict) else type(row).__name__
        if not isinstance(row, dict) or any(k not in row for k in keys):
            raise ValueError(f"{what} '{p}' {item} {i} needs {keys}; found {found}")
    return rows


def videodpo(path: str | Path, dupbeta: float = 0.0) -> list[Pair]:
    """VideoDPO's training folder, as CIntellifusion/VideoDPO reads it (`data/video_data.py`,
    `TextVideo` and `TextVideoDPO`) and writes it (`OmniScore/metadata_pipe/
    dpo_metadata_from_prompts.py`, `dump_VPD_metadata1`):

        metadata.json  [{"basic": {"clip_path": "winvideos/000001.mp4", "clip_duration": 1.6},
                         "misc": {"frame_caption": ["a cat"]}}, ...]
        pair.json      [{"video1": 0, "video2": 1, "label": 0, "frame_caption": "a cat"}, ...]

    `video1` and `video2` index metadata.json's list; video1 is the winner (their loader takes
    it as `videow`, video2 as `videol`). The prompt is the pair's `frame_caption` (the first
    item where it is a list), as their DPO loader takes it; a video is `<path>/<clip_path>` (an
    absolute clip_path stays as it is). Their loader drops clips shorter than `clip_length`
    (1 s) before indexing; their writer records every clip as 1.6 s, so nothing is dropped and
    the indices are those of the list as written, which is how this reads them.
    `dupbeta` > 0 weights a pair (0.72 / score) ** dupbeta from its `score` (1 where absent),
    their `TextVideoDPO(dupbeta=...)` re-weighting; 0, their shipped config's value, weighs
    every pair 1. One folder per call (their `META` list names several)."""
    p = _existing(path, "VideoDPO folder")
    if not p.is_dir():
        raise ValueError(f"VideoDPO folder '{path}' is a file; give the folder holding "
                         "metadata.json and pair.json")
    for name in ("metadata.json", "pair.json"):
        if not (p / name).is_file():
            raise FileNotFoundError(f"VideoDPO folder '{path}' has no {name}; found "
                                    f"{sorted(f.name for f in p.iterdir())}")
    videos = _json_list(p / "metadata.json", "VideoDPO file", "video", ["basic"])
    for i, v in enumerate(videos, 1):
        if not isinstance(v["basic"], dict) or "clip_path" not in v["basic"]:
            found = sorted(v["basic"]) if isinstance(v["basic"], dict) else v["basic"]
            raise ValueError(f"VideoDPO file '{p / 'metadata.json'}' video {i} has no "
                             f"basic.clip_path; its basic is {found}")
    pairs_ = []
    for i, pair in enumerate(_json_list(p / "pair.json", "VideoDPO file", "pair",
                                        ["video1", "video2", "frame_caption"]), 1):
        for key in ("video1", "video2"):
            index = pair[key]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(videos):
                raise ValueError(f"VideoDPO file '{p / 'pair.json'}' pair {i}: {key} is "
                                 f"{index!r}; expected an index into metadata.json's "
                                 f"{len(videos)} videos")
        prompt = pair["frame_caption"]
        prompt = (prompt[0] if prompt else "") if isinstance(prompt, list) else prompt
        weight = 1.0
        if dupbeta:
            score = pair.get("score", 1)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not score > 0:
                raise ValueError(f"VideoDPO file '{p / 'pair.json'}' pair {i}: score is {score!r}; "
                                 "dupbeta weighting needs a positive number")
            weight = (0.72 / score) ** dupbeta
        chosen, rejected = (p / _text(videos[pair[k]]["basic"]["clip_path"])
                            for k in ("video1", "video2"))
        pairs_.append(Pair(_text(prompt), chosen, rejected, weight))
    return pairs_


def pickapic(path: str | Path, caption_column: str = "caption", first_column: str = "video_0",
             second_column: str = "video_1", label_column: str = "label_0",
             root: str | Path | None = None) -> list[Pair]:
    """A CSV, JSON or JSONL table in Pick-a-Pic's convention (yuvalkirstain/pickapic_v2:
    `caption`, `label_0`, `label_1`, `jpg_0`/`jpg_1`), two video paths in place of the images.
    `label_0` is 1 where the first is preferred, 0 where the second is, 0.5 for a tie
    (`label_1` = 1 - label_0 is not read): the reading of SalesforceAIResearch/DiffusionDPO
    `train.py` (swaps the pair where label_0 == 0 so the winner comes first; drops labels not in
    (0, 1) as "no-decisions") and of diffusers' `examples/research_projects/diffusion_dpo/
    train_diffusion_dpo.py` (swaps where label_0 == 0, keeps ties with jpg_0 first). Ties are
    dropped, as DiffusionDPO does, without a message: the caller counts them as the rows less
    the pairs returned. Any other label is refused with its row."""
    base = Path(root) if root is not None else Path(path).parent
    rows = _table(path, "Pick-a-Pic file", [caption_column, first_column, second_column, label_column])
    out = []
    for i, r in enumerate(rows, 1):
        value = r[label_column]
        try:
            label = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            label = None
        if label not in (0.0, 0.5, 1.0):
            raise ValueError(f"Pick-a-Pic file '{path}' row {i}: {label_column} is {value!r}; "
                             "expected 1 (the first video preferred), 0 (the second) or 0.5 (a tie)")
        if label == 0.5:
            continue
        first, second = base / _text(r[first_column]), base / _text(r[second_column])
        out.append(Pair(_text(r[caption_column]), *((first, second) if label == 1.0 else (second, first))))
    return out


def _optional_column(rows: list[dict], column: str, default: str, path, what: str) -> None:
    """A column the user named (not the default) must exist somewhere: a typo is not read as
    'no images' or 'no captions'."""
    if column != default and rows and not any(column in r for r in rows):
        raise ValueError(f"{what} '{path}' has no column {column!r}; the columns found are "
                         f"{sorted(set().union(*rows))}")


def image_video(path: str | Path, video_column: str = "video", image_column: str = "image",
                caption_column: str = "caption", root: str | Path | None = None) -> list[Clip]:
    """(image, video, optional caption) samples for image-to-video training (backbone=svd).

    A table (CSV, JSON, JSONL): one sample per row, the video in `video_column`; the image in
    `image_column` and the caption in `caption_column`, both optional (an absent or empty image
    is the clip's first frame; an absent caption is empty, which image-to-video training allows).
    A folder: every video, with a same-named image (.png, .jpg, ...) as its conditioning image
    where there is one and a same-named .txt caption. A missing or unreadable image is the
    loader's to skip and count (`missing_image`, `bad_image`), as a bad video is."""
    p = _existing(path, "image-video dataset")
    if p.is_dir():
        clips = []
        for video in sorted(v for v in p.iterdir() if v.suffix.lower() in VIDEO_SUFFIXES):
            image = next((video.with_suffix(s) for s in IMAGE_SUFFIXES if video.with_suffix(s).is_file()), None)
            caption = video.with_suffix(".txt")
            text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""
            clips.append(Clip(video, text, image=image))
        if not clips:
            raise ValueError(f"image-video folder '{path}' holds no videos ({', '.join(VIDEO_SUFFIXES)})")
        return clips
    base = Path(root) if root is not None else p.parent
    rows = _table(path, "image-video table", [video_column])
    _optional_column(rows, image_column, "image", path, "image-video table")
    _optional_column(rows, caption_column, "caption", path, "image-video table")
    return [Clip(base / _text(r[video_column]), _text(r.get(caption_column)),
                 image=base / _text(r.get(image_column)) if _text(r.get(image_column)) else None)
            for r in rows]
