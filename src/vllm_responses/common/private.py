"""Files and directories that only the server's user may read: stored responses and
captured streams hold what clients sent and what the model answered."""

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path: Path) -> None:
    """``path`` and its missing parents, created 0700 (an existing directory is left as the
    operator made it)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another process
            pass


def touch(path: Path) -> None:
    """Creates ``path`` 0600 if it does not exist (SQLite then opens it, and gives its WAL and
    shared-memory files the same mode)."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, FILE_MODE))


def create(path: Path) -> BinaryIO:
    """``path`` opened for writing, new or emptied, 0600 when new; unbuffered: what was
    written is in the file at once."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb", buffering=0)
