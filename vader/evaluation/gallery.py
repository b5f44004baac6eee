"""A static HTML gallery and a base-vs-tuned scatter plot for one evaluation folder.

Both are built from the in-memory rows (one per video) and summary that the evaluation harness
also writes to `metrics.csv` and `summary.json`; see `write_gallery` for the data it expects.
The page is a single `index.html` with inline CSS, no JavaScript and nothing fetched from the
web, so it opens from a laptop, a cluster's file browser or a copied folder alike. Every link is
relative to the evaluation folder and checked to exist before the page is written, so a broken
gallery is never left behind silently.
"""
from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from vader.io.files import atomic_write, atomic_write_text

MOTION = "motion"
VIDEO_WIDTH = 256  # display width (CSS px) of tiny videos; larger ones show at native size, up to
MAX_VIDEO_WIDTH = 512  # this, so base and tuned still fit side by side on a laptop screen

# Inline, so the page needs no other file. Colours: green where tuned wins, red where base wins.
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; margin-bottom: .3rem; }
.flag { color: #a40000; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; }
.summary th, .summary td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: right; }
.summary th:first-child, .summary td:first-child { text-align: left; }
.summary thead th { background: #eee; }
.settings { font-size: .85rem; color: #555; }
.settings code { background: #eee; padding: 0 .2rem; }
.trained { font-size: .75rem; background: #ffe08a; border-radius: .2rem; padding: 0 .25rem; }
.verdict-tuned { color: #11772b; font-weight: bold; }
.verdict-base { color: #b3261e; font-weight: bold; }
.verdict-tie, .verdict-inconclusive { color: #777; }
.plots img { max-width: 100%; border: 1px solid #ddd; background: white; margin: .5rem 0; }
.prompt { font-style: italic; white-space: pre-wrap; }
.videos td { vertical-align: top; padding: .4rem .8rem .8rem 0; }
.videos .seed { font-weight: bold; color: #555; padding-top: 1rem; }
figure { margin: 0; }
figure img, figure video { display: block; max-width: 100%; height: auto; border: 1px solid #ccc; }
figure img.upscaled, figure video.upscaled { image-rendering: pixelated; }
figcaption { font-size: .8rem; margin-top: .2rem; }
.scores td { padding: 0 .6rem 0 0; }
.scores td.value { text-align: right; font-variant-numeric: tabular-nums; }
.better { background: #d4f5dc; font-weight: bold; }
.missing { color: #b3261e; }
"""


_NOTE = """<p class="settings">Win rate: share of (prompt, seed) pairs, same noise for both models,
where tuned scores higher than base, a tie (equal scores) counting half, with a 95% Wilson
interval; the mean difference has a 95% bootstrap interval. Highlighted: the higher reward of base and tuned for that pair.</p>"""


def _num(value: Any) -> float | None:
    """A finite float, or None for missing, NaN, infinite or non-numeric values."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 3, sign: bool = False) -> str:
    value = _num(value)
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    value = _num(value)
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _e(text: Any) -> str:
    """Escape for element text and quoted attribute values alike (prompts are user text)."""
    return html.escape(str(text), quote=True)


def _check_relative(eval_dir: Path, rel: str, what: str) -> str:
    """Validate a path relative to `eval_dir` and return it as a URL (percent-encoded)."""
    path = PurePosixPath(rel)
    if path.is_absolute() or "\\" in rel or ".." in path.parts:
        # The gallery must keep working when the folder is copied elsewhere.
        raise ValueError(f"{what} {rel!r} must be a posix path relative to {eval_dir}, inside it")
    if not (eval_dir / path).is_file():
        raise ValueError(f"{what} {rel!r} does not exist: {eval_dir / path} is missing")
    return quote(str(path))


def _metrics(summary: dict) -> list[tuple[str, str]]:
    """(key in rows and summary, label) for every reward, then motion."""
    train = summary.get("train_reward")
    out = [(f"reward/{r}", r + (" (trained)" if r == train else "")) for r in summary["rewards"]]
    return out + [(MOTION, MOTION)]


def _comparison_cells(comp: dict | None) -> str:
    if not comp:
        return "<td>—</td>" * 4
    verdict = str(comp.get("verdict", "n/a"))
    wtl = "/".join(str(comp.get(k, "n/a")) for k in ("wins", "ties", "losses"))
    return (f"<td>{_fmt(comp.get('mean_delta'), sign=True)} "
            f"[{_fmt(comp.get('delta_ci_low'), sign=True)}, {_fmt(comp.get('delta_ci_high'), sign=True)}]</td>"
            f"<td>{_pct(comp.get('win_rate'))} [{_pct(comp.get('ci_low'))}, {_pct(comp.get('ci_high'))}]</td>"
            f"<td>{_e(wtl)}</td><td class=\"verdict-{_e(verdict)}\">{_e(verdict)}</td>")


def _summary_table(summary: dict) -> str:
    models = list(summary["models"])
    per_model = summary.get("per_model", {})
    comparison = summary.get("comparison") or {}
    compare = "tuned" in models and "base" in models
    head = "".join(f"<th>{_e(m)} mean ± std</th>" for m in models)
    if compare:
        head += ("<th>tuned − base [95% CI]</th><th>tuned win rate [95% CI]</th>"
                 "<th>wins/ties/losses</th><th>verdict</th>")
    body = []
    for key, label in _metrics(summary):
        name = _e(label.removesuffix(" (trained)"))
        if label.endswith(" (trained)"):
            name += ' <span class="trained">trained</span>'
        cells = []
        for m in models:
            stats = per_model.get(m, {}).get(key) or {}
            cells.append(f"<td>{_fmt(stats.get('mean'))} ± {_fmt(stats.get('std'))}</td>")
        if compare:
            cells.append(_comparison_cells(comparison.get(key)))
        body.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    # Diversity is one number per model (spread across seeds), so it has no paired comparison.
    cells = "".join(f"<td>{_fmt(per_model.get(m, {}).get('diversity'))}</td>" for m in models)
    body.append(f"<tr><td>diversity</td>{cells}{'<td>—</td>' * 4 if compare else ''}</tr>")
    for key in summary.get("set_metrics", []):  # FVD: one number per model's set of videos
        cells = "".join(f"<td>{_fmt(per_model.get(m, {}).get(key))}</td>" for m in models)
        body.append(f"<tr><td>{_e(key)} (lower is better)</td>{cells}"
                    f"{'<td>—</td>' * 4 if compare else ''}</tr>")
    return (f'<table class="summary"><thead><tr><th>metric</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _settings(summary: dict) -> str:
    items = [("checkpoint", summary.get("checkpoint") or "none (base model)"),
             ("prompts", len(summary.get("prompts", []))),
             ("seeds", ", ".join(str(s) for s in summary.get("seeds", [])))]
    items += list((summary.get("settings") or {}).items())
    return " · ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in items)


def _video_size(summary: dict) -> tuple[int | None, int | None, bool]:
    """Display size from the settings: tiny videos are scaled up (pixelated, so the pixels stay
    crisp), big ones scaled down to fit two side by side. Unknown size: let the browser decide."""
    settings = summary.get("settings") or {}
    w, h = _num(settings.get("width")), _num(settings.get("height"))
    if not w or not h:
        return None, None, False
    shown = min(max(w, VIDEO_WIDTH), MAX_VIDEO_WIDTH)
    return round(shown), round(h * shown / w), shown > w


def _video_cell(row: dict | None, other: dict | None, urls: dict, summary: dict, model: str) -> str:
    if row is None:
        return f'<td><span class="missing">no {_e(model)} video</span></td>'
    url = urls[id(row)]
    width, height, upscaled = _video_size(summary)
    size = f' width="{width}" height="{height}"' if width else ""
    cls = ' class="upscaled"' if upscaled else ""
    alt = f"{model}, prompt {row['prompt_index']}, seed {row['seed']}"
    suffix = PurePosixPath(row["video"]).suffix.lower()
    # A GIF is an image; an MP4 plays in a <video> element (muted, so browsers autoplay it).
    media = (f'<img src="{_e(url)}" alt="{_e(alt)}"{size}{cls}>' if suffix == ".gif" else
             f'<video src="{_e(url)}" title="{_e(alt)}"{size}{cls} autoplay loop muted '
             'playsinline></video>')
    scores = []
    for key, label in _metrics(summary):
        mine, theirs = _num(row.get(key)), _num((other or {}).get(key))
        # Higher reward is better; motion is shown but not judged (more is not better).
        better = (key != MOTION and mine is not None and theirs is not None and mine > theirs)
        highlight = ' class="better"' if better else ""
        scores.append(f'<tr{highlight}><td>{_e(label)}</td>'
                      f'<td class="value">{_fmt(mine)}</td></tr>')
    return (f'<td><figure><a href="{_e(url)}">{media}</a>'
            f'<figcaption><b>{_e(model)}</b> · <a href="{_e(url)}">{suffix[1:]}</a>'
            f'<table class="scores">{"".join(scores)}</table></figcaption></figure></td>')


def _prompt_sections(rows: list[dict], summary: dict, urls: dict) -> str:
    models = list(summary["models"])
    by_key: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    text: dict[int, str] = {}
    for row in rows:
        by_key[(int(row["prompt_index"]), int(row["seed"]))][row["model"]] = row
        text.setdefault(int(row["prompt_index"]), str(row["prompt"]))
    sections = []
    for pi in sorted(text):
        seeds = sorted(s for p, s in by_key if p == pi)
        lines = []
        for seed in seeds:
            videos = by_key[(pi, seed)]
            cells = []
            for model in models:
                other = next((videos.get(m) for m in models if m != model), None)
                cells.append(_video_cell(videos.get(model), other, urls, summary, model))
            lines.append(f'<tr><td class="seed">seed {seed}</td>{"".join(cells)}</tr>')
        sections.append(f'<section id="prompt-{pi}"><h2>Prompt {pi}</h2>'
                        f'<p class="prompt">{_e(text[pi])}</p>'
                        f'<table class="videos">{"".join(lines)}</table></section>')
    return "\n".join(sections)


def write_gallery(eval_dir: Path, rows: list[dict], summary: dict, plots: list[str] = ()) -> Path:
    """Write `eval_dir/index.html` (atomically) and return its path.

    `rows`: one dict per video with `prompt_index`, `prompt`, `seed`, `model` ("base"/"tuned"),
    `video` (a .gif or .mp4, posix path relative to `eval_dir`), `motion` and `reward/<name>` for every
    name in `summary["rewards"]`. `summary`: `title`, `checkpoint`, `models`, `rewards`,
    `train_reward`, `prompts`, `seeds`, `per_model`, `comparison` and `settings`, as written to
    `summary.json`. `plots`: PNGs relative to `eval_dir`, shown above the videos.

    Raises ValueError naming the file if a video or plot is missing (nothing is written then).
    Missing or NaN numbers show as "n/a".
    """
    eval_dir = Path(eval_dir)
    # Validate every link first: a gallery with broken images is worse than an error.
    urls = {id(row): _check_relative(eval_dir, row["video"], "video") for row in rows}
    plot_urls = [_check_relative(eval_dir, p, "plot") for p in plots]
    title = str(summary.get("title", "evaluation"))
    plots_html = "".join(f'<img src="{_e(u)}" alt="plot {_e(p)}">' for u, p in zip(plot_urls, plots))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<p class="settings">{_settings(summary)}</p>
{_summary_table(summary)}
{_NOTE if "tuned" in summary["models"] else ""}
{"".join(f'<p class="flag"><strong>{_e(flag)}</strong></p>' for flag in summary.get("flags", []))}
<div class="plots">{plots_html}</div>
{_prompt_sections(rows, summary, urls)}
</body>
</html>
"""
    return atomic_write_text(eval_dir / "index.html", page)  # a viewer never sees half a page


def plot_base_vs_tuned(rows: list[dict], summary: dict, path: Path) -> Path | None:
    """Per reward (and motion), tuned vs base score of each (prompt, seed) with the y = x line:
    points above it are pairs the tuned model wins. Returns None without a tuned model."""
    if "tuned" not in summary.get("models", []):
        return None
    pairs: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        pairs[(int(row["prompt_index"]), int(row["seed"]))][row["model"]] = row
    pairs = {k: v for k, v in pairs.items() if "base" in v and "tuned" in v}
    if not pairs:
        return None

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(summary)
    n = len(metrics)
    # One row up to three panels, then a near-square grid: 9 panels (8 rewards + motion) is 3x3.
    ncols = n if n <= 3 else math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.4 * nrows + 0.4), squeeze=False)
    comparison = summary.get("comparison") or {}
    for ax, (key, label) in zip(axes.flat, metrics):
        xy = [(_num(p["base"].get(key)), _num(p["tuned"].get(key))) for p in pairs.values()]
        xy = [(x, y) for x, y in xy if x is not None and y is not None]
        comp = comparison.get(key)
        if comp:
            result = (f"tuned wins {_pct(comp.get('win_rate'))} [{_pct(comp.get('ci_low'))}, "
                      f"{_pct(comp.get('ci_high'))}]: {comp.get('verdict', 'n/a')}")
        else:  # no statistics given: at least count the points above the diagonal
            result = f"tuned higher in {sum(y > x for x, y in xy)}/{len(xy)}"
        ax.set_title(f"{label}\n{result}", fontsize=9)
        ax.set_xlabel("base", fontsize=8)
        ax.set_ylabel("tuned", fontsize=8)
        ax.tick_params(labelsize=7)
        if not xy:
            ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = zip(*xy)
        lo, hi = min(xs + ys), max(xs + ys)
        # A window of at least 1% of the values' size: near-equal scores (float noise apart)
        # then sit on the diagonal instead of being blown up to fill the panel.
        pad = max(0.05 * (hi - lo), 0.01 * max(abs(lo), abs(hi)), 1e-6)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--", zorder=1)
        colors = ["#11772b" if y > x else "#b3261e" if y < x else "0.5" for x, y in xy]
        ax.scatter(xs, ys, c=colors, s=22, alpha=0.8, zorder=2)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.ticklabel_format(useOffset=False)  # plain tick values, no "1e-8+0.156" offset label
        ax.grid(alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(str(summary.get("title", "")) + f"  ({len(pairs)} prompt-seed pairs)", fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)
