"""Real faults for tests: a small tmpfs that fills up or turns read-only, and a filler that
takes every free block. Always unmounted, even when the test fails."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_mount() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    if not shutil.which("mount"):
        pytest.skip("needs mount(8)")


@contextlib.contextmanager
def tmpfs(at: Path, size: str = "8m", mode: int = 0o700) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``at`` (created if missing) for the block; its previous
    contents are copied in, so a world built beforehand keeps its files."""
    require_mount()
    at.mkdir(parents=True, exist_ok=True)
    keep = at.with_name(at.name + ".before-mount")
    shutil.move(str(at), str(keep))
    at.mkdir(mode=mode)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode:o}", "tmpfs", str(at)], check=True)
    try:
        for entry in os.listdir(keep):
            src = keep / entry
            (shutil.copytree if src.is_dir() else shutil.copy2)(str(src), str(at / entry))
        yield at
    finally:
        if subprocess.run(["umount", str(at)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(at)], check=True)  # a process still in it: detach it
        shutil.rmtree(keep, ignore_errors=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write zeros into ``directory/name`` until the filesystem refuses a single block more."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 64 << 10, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


def remount(at: Path, mode: str) -> None:
    """``ro`` or ``rw``: what an operator (or a failing disk's error policy) does."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(at)], check=True)
