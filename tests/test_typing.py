"""The wall's logic and the one spawn path stay `mypy --strict` clean: privsep (pure
decisions), runtime (spawn, executor, boot), the lock, serve, the state database, the vault,
and system (backup, restore, status) with the control channel between them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("target", ["ductile/privsep", "ductile/runtime", "ductile/lock.py", "ductile/serve",
                                    "ductile/state", "ductile/vault", "ductile/system", "ductile/control.py"])
def test_is_mypy_strict_clean(target: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           target], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_whole_library_type_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Everything else, at mypy's default strictness, imports followed: a wrapped import
    once hid two names in a comment, which only this noticed."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "ductile"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
