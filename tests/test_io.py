"""Atomic writes (cbam._io): permissions like open(), no temporary left behind on failure."""
import os
import stat

import pytest

from cbam._io import atomic_write, write_text


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_file_gets_umask_mode_and_existing_keeps_its_own(tmp_path):
    old = os.umask(0o022)
    try:
        p = tmp_path / "report.md"
        write_text(p, "a\n")
        assert p.read_text() == "a\n" and _mode(p) == 0o644  # mkstemp alone would leave 0600
        os.chmod(p, 0o640)
        write_text(p, "b\n")
        assert p.read_text() == "b\n" and _mode(p) == 0o640
    finally:
        os.umask(old)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "ckpt.bin"
    write_text(p, "good")

    def bad(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, bad)
    assert p.read_text() == "good"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.bin"]
