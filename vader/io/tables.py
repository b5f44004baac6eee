"""Rows of a CSV, JSON (a list) or JSONL file, with errors that name the file and the line: the
prompt tables (vader.data.prompts) and the video manifests (vader.data.manifests) read through it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".json", ".jsonl")


def read_rows(p: Path, path: str, what: str = "table") -> list:
    """The rows of `p` (CSV: dicts; JSON: the list it holds; JSONL: one value per line).
    `path` is the name the user gave, `what` what to call the file in errors."""
    suffix = p.suffix.lower()
    with p.open(encoding="utf-8-sig", newline="") as f:
        if suffix == ".csv":
            return list(csv.DictReader(f))
        if suffix == ".json":
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{what} '{path}' is not valid JSON: {e}") from None
            if not isinstance(rows, list):
                raise ValueError(f"{what} '{path}' holds a JSON {type(rows).__name__}; "
                                 f"expected a list of objects or a list of strings")
            return rows
        rows = []
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{what} '{path}' line {i} is not valid JSON: {e}") from None
        return rows
