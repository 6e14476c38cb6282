r"""Terminal output shared by every command: JSON, rich tables on a TTY, plain lines otherwise.

rich is imported only when a table is actually drawn on a terminal, so scripted and
``--json`` use stays lean. Colour is off when ``NO_COLOR`` is set or output is not a TTY.

Much of what commands print was written by a plugin (its error, log lines, stderr, result
text) or by whoever called the API. A plugin that prints ``\e]2;...\a\e[2J`` must not
retitle or clear the operator's terminal, and a right-to-left override must not make a
line read differently from what it is. So every human line (``say``, ``table``) goes through
``safe``: control and format characters are shown as escapes (``\x1b``, ``\u202e``), always,
not only on a TTY, because human output piped to a pager or a file reaches a terminal
later. ``--json`` output (``emit_json``) stays exact: JSON escapes them by itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with every control or format character a terminal would act on shown as an
    escape; newlines (and tabs) kept unless ``keep_newlines`` is False."""
    out = _UNSAFE.sub(_escape, text)
    out = "".join(_escape_format(ch) for ch in out) if not out.isascii() else out
    return out if keep_newlines else out.replace("\n", "\\n")


def _escape_format(ch: str) -> str:
    """Anything else Unicode calls a control or format character (category Cc/Cf)."""
    if ch.isascii() or unicodedata.category(ch) not in ("Cc", "Cf"):
        return ch
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def emit_json(obj: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    json.dump(obj, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None,
          styles: dict[str, str] | None = None) -> None:
    """A rich table on a TTY; tab-free aligned plain lines otherwise (stable for grep/tests)."""
    rows = [[("" if c is None else safe(str(c), keep_newlines=False)) for c in row] for row in rows]
    columns = [safe(c) for c in columns]
    if is_tty():
        from rich.table import Table

        t = Table(title=safe(title) if title else None, show_lines=False, header_style="bold")
        for col in columns:
            t.add_column(col, style=(styles or {}).get(col), overflow="fold")
        for row in rows:
            t.add_row(*row)
        console().print(t)
        return
    if title:
        print(safe(title))
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def say(message: str, *, err: bool = True) -> None:
    """One human line (stderr by default, so stdout stays parseable), made ``safe``."""
    print(safe(message), file=sys.stderr if err else sys.stdout)
