"""Facts about the Python running ductile, as pure checks."""

from __future__ import annotations

import os
import stat
import sys

from ductile.errors import PythonRefused


def refuse_unsafe_python(version: tuple[int, ...], implementation: str) -> PythonRefused | None:
    """None if this interpreter may drop privileges; otherwise the refusal.

    CPython 3.12.0's ``extra_groups=[]`` silently keeps the gateway's supplementary groups
    (CVE-2023-6507); before 3.11 subprocess has no ``process_group``.
    """
    shown = ".".join(map(str, version[:3]))
    if implementation == "cpython" and tuple(version[:3]) == (3, 12, 0):
        return PythonRefused(
            "CPython 3.12.0 does not clear supplementary groups when dropping privileges (CVE-2023-6507)",
            where=f"python {shown}", fix="use CPython 3.11, or 3.12.1 or newer",
        )
    if tuple(version[:2]) < (3, 11):
        return PythonRefused("ductile needs Python 3.11 or newer (subprocess process_group)",
                             where=f"python {shown}", fix="use /usr/bin/python3.11 or newer")
    return None


def world_executable(path: str) -> bool:
    """Can any uid execute ``path``: o+x on the file and o+x on every directory above it?"""
    try:
        real = os.path.realpath(path)
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def account_reachable_python() -> str | None:
    """An interpreter dropped accounts can run: this one if reachable, else the system's."""
    for cand in (sys.executable, "/usr/bin/python3.11", "/usr/bin/python3"):
        if cand and world_executable(cand):
            return cand
    return None
