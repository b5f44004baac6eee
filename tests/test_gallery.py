"""vader.evaluation.gallery: every link of index.html resolves, prompts are escaped, a missing video fails
loudly, the plot is drawn, and headless Chromium shows the page with no console errors.

The Chromium tests use Debian's chromium and chromium-driver (`.ci/run` installs them) so that
Selenium Manager downloads nothing; if they are missing the tests fail rather than skip, because
a skipped browser check looks green while checking nothing.
"""
from __future__ import annotations

import math
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CHROMEDRIVER, require_chromium, severe
from vader.evaluation.gallery import plot_base_vs_tuned, write_gallery
from vader.io.video import save_video

PROMPTS = ["a red fox running through snow", 'a <b>bold</b> & "quoted" <script>x</script> prompt',
           "ocean waves at sunset"]
SEEDS = [7, 8]
REWARDS = ["colorfulness", "brightness"]
T, H, W = 6, 48, 64


def make_video(model: str, pi: int, seed: int) -> torch.Tensor:
    """(T, 3, H, W) in [0, 1]: a bar sweeping over a rainbow gradient. Tuned is saturated, base
    washed out; brightness and speed vary per (prompt, seed) so the scores and plot are not flat."""
    hue = (pi * 0.31 + seed * 0.17) % 1.0
    saturation = (0.9 if model == "tuned" else 0.3) + 0.05 * pi - 0.04 * (seed % 2)
    gain = 0.7 + 0.1 * ((pi + seed + (model == "tuned")) % 3)
    speed = (1 + pi + seed % 2) / (2 * T)
    y = torch.linspace(0, 1, H).view(H, 1)
    x = torch.linspace(0, 1, W).view(1, W)
    phase = 2 * math.pi * (hue + torch.tensor([0.0, 1 / 3, 2 / 3])).view(3, 1, 1)
    rgb = 0.5 + 0.5 * torch.cos(phase + 3 * x + 2 * y)
    rgb = saturation * rgb + (1 - saturation) * rgb.mean(0, keepdim=True)
    frames = [torch.maximum(gain * rgb, ((x - t * speed) % 1 < 0.1).float().expand(3, H, W))
              for t in range(T)]
    return torch.stack(frames).clamp(0, 1)


def build_eval(eval_dir: Path, models=("base", "tuned"),
               video_format: str = "gif") -> tuple[list[dict], dict]:
    """Videos on disk plus rows and a summary shaped like the evaluation harness's."""
    rows = []
    for pi, prompt in enumerate(PROMPTS):
        for seed in SEEDS:
            for model in models:
                video = make_video(model, pi, seed)
                path = f"videos/{model}/{pi:03d}_p{pi}_seed{seed}.{video_format}"
                save_video(video, eval_dir / path, fps=4)
                rows.append({"prompt_index": pi, "prompt": prompt, "seed": seed, "model": model,
                             "video": path,
                             "motion": float((video[1:] - video[:-1]).abs().mean()),
                             "reward/colorfulness": float(video.std(1).mean()),
                             "reward/brightness": float(video.mean())})
    per_model = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        per_model[model] = {k: {"mean": float(np.mean([r[k] for r in mine])),
                                "std": float(np.std([r[k] for r in mine]))}
                            for k in [f"reward/{n}" for n in REWARDS] + ["motion"]}
        per_model[model]["diversity"] = 0.12 if model == "tuned" else None  # None renders n/a
    comparison = {}
    if "tuned" in models:
        for key in [f"reward/{n}" for n in REWARDS] + ["motion"]:
            base = {(r["prompt_index"], r["seed"]): r[key] for r in rows if r["model"] == "base"}
            deltas = [r[key] - base[(r["prompt_index"], r["seed"])] for r in rows if r["model"] == "tuned"]
            wins = sum(d > 0 for d in deltas)
            comparison[key] = {"win_rate": wins / len(deltas), "ci_low": 0.6, "ci_high": 1.0,
                               "wins": wins, "ties": 0, "losses": len(deltas) - wins,
                               "mean_delta": float(np.mean(deltas)), "delta_ci_low": float("nan"),
                               "delta_ci_high": 0.2, "verdict": "tuned" if wins else "base"}
    summary = {"title": "colorfulness run, checkpoint step_000040",
               "checkpoint": "step_000040" if "tuned" in models else None,
               "models": list(models), "rewards": REWARDS, "train_reward": REWARDS[0],
               "prompts": PROMPTS, "seeds": SEEDS, "per_model": per_model, "comparison": comparison,
               "settings": {"num_frames": T, "height": H, "width": W, "num_inference_steps": 10,
                            "guidance_scale": 7.5}}
    return rows, summary


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    eval_dir = tmp_path_factory.mktemp("eval")
    rows, summary = build_eval(eval_dir)
    plot = plot_base_vs_tuned(rows, summary, eval_dir / "plots" / "base_vs_tuned.png")
    assert plot == eval_dir / "plots" / "base_vs_tuned.png"
    write_gallery(eval_dir, rows, summary, plots=["plots/base_vs_tuned.png"])
    return eval_dir, rows, summary


class PageParser(HTMLParser):
    """Every src/href and the text of each `<p class="prompt">` (unescaped by the parser)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.imgs, self.videos, self.prompts, self._in_prompt = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag == "video":
            self.videos.append(attrs["src"])
        if tag == "p" and attrs.get("class") == "prompt":
            self._in_prompt = True
            self.prompts.append("")

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_prompt = False

    def handle_data(self, data):
        if self._in_prompt:
            self.prompts[-1] += data


def parse(eval_dir: Path) -> tuple[PageParser, str]:
    text = (eval_dir / "index.html").read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    return parser, text


def local_files(eval_dir: Path, links: list[str]) -> set[Path]:
    """Resolve relative links against eval_dir; the only non-file link allowed is the favicon."""
    files = set()
    for link in links:
        if link == "data:,":
            continue
        assert not urlsplit(link).scheme and not link.startswith("/"), f"not relative: {link}"
        path = (eval_dir / unquote(link)).resolve()
        assert path.is_file(), f"index.html links to a missing file: {link}"
        assert path.is_relative_to(eval_dir.resolve()), f"link leaves the folder: {link}"
        files.add(path)
    return files


def test_links_resolve_and_prompts_escaped(gallery):
    eval_dir, rows, summary = gallery
    parser, text = parse(eval_dir)
    files = local_files(eval_dir, parser.links)
    # Every video of every (prompt, seed, model) is shown and linked, and the plot too.
    expected = {(eval_dir / r["video"]).resolve() for r in rows}
    assert files == expected | {(eval_dir / "plots/base_vs_tuned.png").resolve()}
    assert sorted(parser.imgs) == sorted([r["video"] for r in rows] + ["plots/base_vs_tuned.png"])
    assert parser.prompts == PROMPTS  # in prompt_index order, text intact after unescaping
    assert "<script>" not in text and "<b>bold" not in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in text
    for seed in SEEDS:
        assert text.count(f"seed {seed}</td>") == len(PROMPTS)
    assert '<meta charset="utf-8">' in text and '<link rel="icon" href="data:,">' in text
    assert "n/a" in text  # NaN delta CI and a None diversity render as n/a, not as a crash
    assert 'class="trained"' in text
    assert not list(eval_dir.glob(".*tmp*"))  # temp files renamed away


def test_base_only(tmp_path):
    rows, summary = build_eval(tmp_path, models=("base",))
    assert plot_base_vs_tuned(rows, summary, tmp_path / "plot.png") is None
    assert not (tmp_path / "plot.png").exists()
    write_gallery(tmp_path, rows, summary)
    parser, text = parse(tmp_path)
    files = local_files(tmp_path, parser.links)
    assert files == {(tmp_path / r["video"]).resolve() for r in rows}
    body = text[text.index("<body>"):]
    assert "tuned" not in body and "win rate" not in body  # no tuned column, no comparison


def copy_videos(gallery, dest: Path) -> tuple[Path, list[dict], dict]:
    """The fixture's videos in a fresh folder (re-encoding them costs seconds), no index.html."""
    eval_dir, rows, summary = gallery
    shutil.copytree(eval_dir / "videos", dest / "videos")
    return dest, [dict(r) for r in rows], summary


def test_mp4_videos_play_in_video_elements(tmp_path):
    rows, summary = build_eval(tmp_path, video_format="mp4")
    write_gallery(tmp_path, rows, summary)
    parser, _ = parse(tmp_path)
    assert sorted(parser.videos) == sorted(r["video"] for r in rows) and parser.imgs == []
    assert local_files(tmp_path, parser.links) == {(tmp_path / r["video"]).resolve() for r in rows}


def test_missing_video_raises(gallery, tmp_path):
    tmp_path, rows, summary = copy_videos(gallery, tmp_path)
    (tmp_path / rows[3]["video"]).unlink()
    with pytest.raises(ValueError, match=rows[3]["video"]):
        write_gallery(tmp_path, rows, summary)
    assert not (tmp_path / "index.html").exists()


def test_missing_plot_and_absolute_path_raise(gallery, tmp_path):
    tmp_path, rows, summary = copy_videos(gallery, tmp_path)
    with pytest.raises(ValueError, match="plots/nope.png"):
        write_gallery(tmp_path, rows, summary, plots=["plots/nope.png"])
    rows[0] = dict(rows[0], video=str((tmp_path / rows[0]["video"]).resolve()))
    with pytest.raises(ValueError, match="relative"):
        write_gallery(tmp_path, rows, summary)
    assert not (tmp_path / "index.html").exists()


def test_plot_grid_for_many_rewards(gallery, tmp_path):
    eval_dir, rows, summary = gallery
    two = np.asarray(Image.open(eval_dir / "plots" / "base_vs_tuned.png"))
    assert two.shape[1] > two.shape[0]  # three panels (2 rewards + motion) in one row
    # Eight rewards + motion: a 3x3 grid, not nine panels in a row.
    names = [f"r{i}" for i in range(8)]
    many_rows = [dict(r, **{f"reward/{n}": r["reward/brightness"] * (i + 1) for i, n in enumerate(names)})
                 for r in rows]
    many = dict(summary, rewards=names, train_reward="r0")
    path = plot_base_vs_tuned(many_rows, many, tmp_path / "many.png")
    image = np.asarray(Image.open(path))
    assert 0.8 < image.shape[1] / image.shape[0] < 1.25
    assert not list(tmp_path.glob(".*tmp*"))


# --- headless Chromium ---------------------------------------------------------------------------

def test_chromium_shows_gallery(gallery, browser, tmp_path):
    eval_dir, rows, _ = gallery
    browser.get((eval_dir / "index.html").as_uri())
    assert browser.title == "colorfulness run, checkpoint step_000040"
    assert severe(browser) == []
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
    assert len(images) == len(rows) + 1
    assert [src for src, complete, width in images if not (complete and width > 0)] == []
    shot = tmp_path / "gallery.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"screenshot looks blank: {len(colours)} colours"  # plot + GIFs
    assert pixels.std() > 20


def test_chromium_console_check_can_fail(browser, tmp_path):
    # Control: the same check sees a broken image, so an empty log above means something.
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title>'
                    '<link rel="icon" href="data:,"></head><body><img src="missing.gif"></body></html>',
                    encoding="utf-8")
    browser.get(page.as_uri())
    entries = severe(browser)
    assert any("missing.gif" in e["message"] for e in entries), entries


def test_chromium_missing_fails_not_skips(tmp_path):
    # Without the browser the tests must fail with the fix in the message, never skip.
    with pytest.raises(pytest.fail.Exception, match=r"bash install.sh.*VADER_CHROMIUM"):
        require_chromium((tmp_path / "chromium", CHROMEDRIVER))


def test_a_hacking_flag_is_shown_on_the_page(tmp_path):
    rows, summary = build_eval(tmp_path)
    summary["flags"] = ["possible reward hacking: r rose 0.1 -> 0.2 while motion fell 0.02 -> 0.01 (-50%)"]
    write_gallery(tmp_path, rows, summary)
    _, text = parse(tmp_path)
    assert '<p class="flag"><strong>possible reward hacking: r rose 0.1 -&gt; 0.2' in text
