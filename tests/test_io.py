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


def test_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    from cbam._io import remove_temporaries
    import tempfile
    # exactly the name atomic_write gives its temporary, as a kill -9 mid-write leaves it
    fd, left = tempfile.mkstemp(prefix=".ckpt.bin.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    keep = ["ckpt.bin", "notes.tmp", ".hidden.tmp", ".a.b.tmp"]
    for name in keep:
        (tmp_path / name).write_text("x")
    assert remove_temporaries(tmp_path) == [left]
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    assert remove_temporaries(tmp_path / "missing") == []
