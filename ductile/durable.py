"""Durability on disk, once for every writer (the state database, the vault and its key).

A rename or a new file is durable only when the *directory* that holds it is fsync'd too:
``fsync`` of the file makes its bytes durable, not its name (fsync(2), "Calling fsync()
does not necessarily ensure that the entry in the directory containing the file has also
reached disk").
"""

from __future__ import annotations

import os


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` itself: the names created, renamed or removed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
