"""Terminal output shared by every command: JSON, rich tables on a TTY, plain lines otherwise.

rich is imported only when a table is actually drawn on a terminal, so scripted and
``--json`` use stays lean. Colour is off when ``NO_COLOR`` is set or output is not a TTY.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


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
    rows = [[("" if c is None else str(c)) for c in row] for row in rows]
    if is_tty():
        from rich.table import Table

        t = Table(title=title, show_lines=False, header_style="bold")
        for col in columns:
            t.add_column(col, style=(styles or {}).get(col), overflow="fold")
        for row in rows:
            t.add_row(*row)
        console().print(t)
        return
    if title:
        print(title)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def say(message: str, *, err: bool = True) -> None:
    """One human line (stderr by default, so stdout stays parseable)."""
    print(message, file=sys.stderr if err else sys.stdout)
