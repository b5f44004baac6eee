"""vader.io.files: a file is replaced whole or not at all."""
from __future__ import annotations

import pytest

from vader.io.files import atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old\n")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail, fsync=True)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_the_temporary_keeps_the_suffix_and_is_hidden(tmp_path):
    seen = []
    atomic_write(tmp_path / "sub" / "plot.png", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")))
    assert seen[0].suffix == ".png" and seen[0].name.startswith(".plot.")
    assert (tmp_path / "sub" / "plot.png").read_bytes() == b"x"
