"""Atomic file writes (a reader sees the old file or the new one, never a partial write) and bounded reads."""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from pathlib import Path

# `.<name>.<random>`: atomic_write's temporary files (8 characters: those of earlier versions, by mkstemp)
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}$")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, and rename it over `path` (a symbolic
    link there is replaced, never written through). The new file's mode is 0666 less the umask, as for
    any file a process creates: whoever the umask lets read the old file (a serving account in the
    group) can read the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, _NEW_FILE, 0o666)  # O_EXCL: never an existing file or link
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def interrupted_write_target(name: str) -> str | None:
    """The name of the file an `atomic_write` was writing, when `name` is that write's temporary file."""
    match = _TEMP_NAME.fullmatch(name)
    return match["target"] if match else None


def read_bounded(path: str | Path, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, decided from fstat before reading.

    ValueError (one line) for a device, FIFO, directory or other non-regular file, one that is too
    large, or (without `follow_symlinks`) a symbolic link, so nothing unbounded and nothing outside
    the intended folder is ever read; OSError as the system raises it otherwise.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK  # a FIFO must not block the open
    try:
        fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise ValueError(f"{path} is a symbolic link") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the stat
        raise ValueError(f"{path} is over the {max_bytes:,}-byte limit")
    return data
