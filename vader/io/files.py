"""Files that appear complete or not at all. Standard library only, so torch-free commands
(`python -m vader.sweep`) use it too.

The content is written to a hidden temporary file in the same folder and renamed over the
target: a rename within one filesystem is atomic, so a crash, a full disk or a pre-empted job
never leaves half a video, table, page or checkpoint pointer where a reader would trip over it.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object], fsync: bool = False) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then rename it into place; the
    temporary file is removed if anything fails. It keeps the suffix of `path`, so writers that
    pick a format from the name (matplotlib, imageio) write the right one, and it starts with a
    dot, so globs such as `*.mp4` skip it. `fsync`: flush it to disk before the rename, for
    files a resume depends on. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """`atomic_write` of UTF-8 text, written as given (no newline translation)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return atomic_write(path, write, fsync)
