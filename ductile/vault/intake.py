"""How a secret value enters ductile: stdin or a hidden prompt, never argv or env.

A value on the command line lands in shell history and in ``/proc/<pid>/cmdline``, which every
account (every plugin) can read, so there is no option that takes one. A terminal on stdin is
refused too: typing a secret into an echoing terminal shows it on screen; ``--prompt`` reads it
without echo instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from ductile.errors import VaultError

MAX_VALUE_BYTES = 1024 * 1024


def normalize_value(raw: bytes, name: str) -> str:
    """UTF-8 text without one trailing newline (what ``echo`` and editors add); empty is refused."""
    where = f"secret {name}"
    if len(raw) > MAX_VALUE_BYTES:
        raise VaultError(f"the value is larger than {MAX_VALUE_BYTES} bytes", where=where,
                         fix="store a smaller value (keep large files outside the vault)")
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise VaultError("refusing an empty value", where=where,
                         fix=f"pipe the value on stdin: ductile vault set {name} < FILE")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VaultError("the value is not UTF-8 text", where=where,
                         fix="store text (base64-encode binary values first)") from None


def read_value(name: str, stdin: BinaryIO, *, stdin_is_tty: bool,
               prompt: Callable[[], str] | None = None) -> str:
    """The value for ``vault set``: from ``prompt`` when given, else stdin unless it is a terminal."""
    if prompt is not None:
        return normalize_value(prompt().encode("utf-8"), name)
    if stdin_is_tty:
        raise VaultError("refusing to read a secret value from a terminal on stdin (it would echo)",
                         where=f"secret {name}",
                         fix=f"pipe it (ductile vault set {name} < FILE) or pass --prompt to type it hidden")
    return normalize_value(stdin.read(MAX_VALUE_BYTES + 1), name)
