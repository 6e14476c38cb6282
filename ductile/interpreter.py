"""Facts about the Python running ductile, as pure checks."""

from __future__ import annotations

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
