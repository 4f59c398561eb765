"""Atomic file writes: a reader never sees a half-written checkpoint or report."""
import json
import os
import re
import tempfile
from typing import Any, Callable, List, Union

PathLike = Union[str, os.PathLike]
_TMP_SUFFIX = ".tmp"
# ".<target name>.<mkstemp's 8 random characters>.tmp": the only names atomic_write leaves after a kill
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path`` (same directory, so the
    rename is atomic); the temporary file is removed if ``write`` fails."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=_TMP_SUFFIX, dir=d)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600: give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temporaries(folder: PathLike) -> List[str]:
    """Remove what :func:`atomic_write` left in ``folder`` when its process was killed mid-write
    (``kill -9`` skips the cleanup). Call it only where no other process is writing."""
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            p = os.path.join(folder, name)
            if _TMP_NAME.match(name) and os.path.isfile(p):
                os.remove(p)
                removed.append(p)
    return removed


def _mode_for(path: str) -> int:
    """The existing file's permissions, or what ``open(path, "w")`` would create (0666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_text(path: PathLike, text: str) -> None:
    def w(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, w)


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
