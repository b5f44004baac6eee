"""Where prompts come from: a list to train on and a disjoint held-out list to evaluate on.

Each factory is the `_target_` of one YAML in `conf/prompt_fn/`:

    python train.py                                           # builtin
    python train.py prompt_fn=text_file prompt_fn.path=prompts.txt
    python train.py prompt_fn=table prompt_fn.path=prompts.csv prompt_fn.column=caption
    python train.py prompt_fn=nouns_activities
"""
from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vader.io.tables import read_rows

__all__ = ["PromptSource", "builtin", "text_file", "table", "nouns_activities"]


@dataclass(frozen=True)
class PromptSource:
    """Training prompts and held-out prompts; both non-empty, no prompt in both."""

    train: list[str]
    val: list[str]

    def __post_init__(self) -> None:
        # The factories already say which knob to turn; this catches anyone building one by hand.
        if not self.train or not self.val:
            raise ValueError(f"PromptSource needs training and held-out prompts, got "
                             f"{len(self.train)} train and {len(self.val)} val")
        both = set(self.train) & set(self.val)
        if both:
            raise ValueError(f"prompts in both train and val: {sorted(both)[:5]}")


# Short and concrete, so that a small model can visibly learn them; the last few are held out.
BUILTIN_PROMPTS = (
    "a dog running on the beach",
    "a cat playing with a ball of yarn",
    "a horse galloping through a field",
    "a bear catching a fish in a river",
    "a rabbit eating a carrot in a garden",
    "a fox jumping over a log",
    "a panda eating bamboo",
    "a monkey swinging from a tree",
    "an eagle flying over the mountains",
    "a duck swimming in a pond",
    "a penguin sliding on the ice",
    "a squirrel climbing a tree",
    "a dolphin jumping out of the water",
    "a red car driving down a mountain road",
    "a sailboat sailing on a calm lake",
    "a train crossing a bridge",
    "a hot air balloon rising at sunrise",
    "a windmill turning in the wind",
    "a kite flying in a blue sky",
    "a paper boat floating down a stream",
    "a frog jumping into a pond",
    "an owl flying through the forest at night",
    "a goat climbing a rocky hill",
    "a candle flickering on a wooden table",
)


def builtin(num_val: int = 4) -> PromptSource:
    """The prompts above; the last `num_val` are held out."""
    n = len(BUILTIN_PROMPTS)
    if not 1 <= num_val < n:
        raise ValueError(f"prompt_fn.num_val={num_val} would leave train or val empty: there are "
                         f"{n} built-in prompts; give prompt_fn.num_val between 1 and {n - 1}")
    return PromptSource(train=list(BUILTIN_PROMPTS[:-num_val]), val=list(BUILTIN_PROMPTS[-num_val:]))


def text_file(path: str, val_path: str | None = None, val_fraction: float = 0.1,
              seed: int = 0) -> PromptSource:
    """One prompt per line; blank lines and lines starting with '#' are skipped.

    Held-out prompts come from `val_path` if given, else a seeded `val_fraction` of `path`.
    """
    prompts = _read_lines(path, "path")
    if val_path is not None:
        return _with_val_file(prompts, _read_lines(val_path, "val_path"), path, val_path)
    return _split(prompts, val_fraction, seed, f"prompt file '{path}'",
                  "or give prompt_fn.val_path=<a file of held-out prompts>")


def table(path: str, column: str = "prompt", val_path: str | None = None,
          val_fraction: float = 0.1, seed: int = 0) -> PromptSource:
    """The `column` of a .csv, .json (list of objects, or list of strings) or .jsonl file.

    Held-out prompts come from `val_path` (same format) if given, else a seeded split.
    """
    prompts = _read_table(path, column, "path")
    if val_path is not None:
        return _with_val_file(prompts, _read_table(val_path, column, "val_path"), path, val_path)
    return _split(prompts, val_fraction, seed, f"prompt table '{path}'",
                  "or give prompt_fn.val_path=<a table of held-out prompts>")


def nouns_activities(nouns: Sequence[str] | str, activities: Sequence[str] | str,
                     template: str = "{noun} {activity}", val_fraction: float = 0.1,
                     seed: int = 0) -> PromptSource:
    """Every noun x activity, e.g. "a dog" x "riding a bike"; a str is a file, one per line.

    The split is over combinations, so held-out prompts pair seen nouns with seen activities
    in new ways: the generalisation VADER reports.
    """
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if fields != {"noun", "activity"}:
        raise ValueError(f"prompt_fn.template={template!r} must use exactly the fields {{noun}} "
                         f"and {{activity}}, found {sorted(fields)}")
    nouns, activities = _entries(nouns, "nouns"), _entries(activities, "activities")
    prompts = _unique(template.format(noun=n, activity=a) for n in nouns for a in activities)
    return _split(prompts, val_fraction, seed,
                  f"{len(nouns)} nouns x {len(activities)} activities",
                  "or add entries to prompt_fn.nouns / prompt_fn.activities")


def world(val: str = "sample") -> PromptSource:
    """The shapes world's prompts (vader/world/grammar.py): its 270 training prompts to train on,
    prompts whose colour-shape-motion combination training never shows to evaluate on (`val`:
    "sample", one per held-out combination, 18; or "all", 54)."""
    from vader.world.grammar import heldout_sample, scenes  # the world is imported only if chosen
    if val not in ("sample", "all"):
        raise ValueError(f"prompt_fn.val={val!r}: choose sample (18 held-out prompts) or all (54)")
    held = heldout_sample() if val == "sample" else scenes("heldout")
    return PromptSource(train=[s.prompt for s in scenes("train")], val=[s.prompt for s in held])


def _split(prompts: list[str], val_fraction: float, seed: int, source: str,
           other_fix: str) -> PromptSource:
    if not 0 < val_fraction < 1:
        raise ValueError(f"prompt_fn.val_fraction={val_fraction} must be between 0 and 1 "
                         f"(exclusive); it is the share of {source} held out")
    n = len(prompts)
    if n < 2:
        raise ValueError(f"{source} gives {n} prompt(s), too few to hold one out and train on "
                         f"the rest; add prompts {other_fix}")
    # At least one each way, so a tiny list still yields a usable split.
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    held = set(random.Random(seed).sample(range(n), n_val))
    return PromptSource(train=[p for i, p in enumerate(prompts) if i not in held],
                        val=[p for i, p in enumerate(prompts) if i in held])


def _with_val_file(prompts: list[str], val: list[str], path: str, val_path: str) -> PromptSource:
    held = set(val)
    train = [p for p in prompts if p not in held]
    if not train:
        raise ValueError(f"all {len(prompts)} prompts in '{path}' are also in prompt_fn.val_path="
                         f"'{val_path}', which leaves none to train on; give a val_path holding "
                         f"only held-out prompts, or drop it to split by prompt_fn.val_fraction")
    return PromptSource(train=train, val=val)


def _unique(prompts) -> list[str]:
    # A repeated prompt could otherwise land in both train and val.
    return list(dict.fromkeys(prompts))


def _existing(path: str, knob: str, expected: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise FileNotFoundError(f"prompt file '{path}' is a folder; give prompt_fn.{knob}=<{expected}>")
    if not p.is_file():
        # Under Hydra with `hydra.job.chdir=true` a relative path is read from the run directory.
        where = "" if p.is_absolute() else f" (looked for {p.resolve()})"
        raise FileNotFoundError(f"prompt file '{path}' does not exist{where}; give "
                                f"prompt_fn.{knob}=<{expected}>")
    return p


def _read_lines(path: str, knob: str, expected: str = "a text file with one prompt per line") -> list[str]:
    # utf-8-sig: files saved by Excel or Notepad start with a byte-order mark.
    try:
        text = _existing(path, knob, expected).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    lines = _unique(s for s in (line.strip() for line in text.splitlines())
                    if s and not s.startswith("#"))
    if not lines:
        raise ValueError(f"prompt file '{path}' has no prompts (only blank lines or '#' "
                         f"comments); put one per line, or point prompt_fn.{knob} at another file")
    return lines


def _not_utf8(path: str, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"prompt file '{path}' is not UTF-8 text (byte {err.object[err.start]:#04x} "
                      f"at position {err.start}); save it as UTF-8, or check that it is the "
                      "prompt file you meant")


def _entries(value: Sequence[str] | str, knob: str) -> list[str]:
    if isinstance(value, str):
        return _read_lines(value, knob, "a text file with one entry per line, or a list")
    entries = _unique(s for s in (str(v).strip() for v in value) if s)
    if not entries:
        raise ValueError(f"prompt_fn.{knob} is empty; give at least one entry")
    return entries


def _read_table(path: str, column: str, knob: str) -> list[str]:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"prompt table '{path}' has extension '{suffix}'; prompt_fn=table reads "
                         f".csv, .json or .jsonl (for one prompt per line use prompt_fn=text_file)")
    p = _existing(path, knob, "a .csv, .json or .jsonl file")
    try:
        rows = read_rows(p, path, "prompt table")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    values = []
    for i, row in enumerate(rows, 1):
        if isinstance(row, str):
            values.append(row)
        elif isinstance(row, dict) and column in row:
            values.append("" if row[column] is None else str(row[column]))
        elif isinstance(row, dict):
            raise ValueError(f"prompt table '{path}' has no column '{column}' (row {i}); its "
                             f"columns are {sorted(row)}; give prompt_fn.column=<one of them>")
        else:
            raise ValueError(f"prompt table '{path}' row {i} is {row!r}; expected an object with "
                             f"a '{column}' field, or a string")
    prompts = _unique(s for s in (v.strip() for v in values) if s)
    if not prompts:
        raise ValueError(f"prompt table '{path}' has no prompts (no rows, or column '{column}' "
                         f"is empty everywhere); point prompt_fn.{knob} at a table with prompts")
    return prompts
