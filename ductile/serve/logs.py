"""Structured logs for the daemon: JSON lines on stderr for journald and log shippers,
readable rich lines when a person watches a terminal.

Every line carries ``msg`` plus named fields (``job_id``, ``plugin``, ...). A ``Redactor``
filter sits in front of every handler and replaces any value it was told is secret (API
tokens, webhook keys) with ``[redacted]``: the code never logs a value on purpose, and
this makes an accident visible instead of a leak.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from ductile.render import safe

REDACTED = "[redacted]"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MIN_SECRET_LEN = 4  # shorter "secrets" would redact ordinary words


class Redactor(logging.Filter):
    """Scrubs known secret values from a record's message and fields, in place."""

    def __init__(self) -> None:
        super().__init__()
        self._values: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        for v in values:
            if isinstance(v, str) and len(v) >= MIN_SECRET_LEN and v not in self._values:
                self._values.append(v)
        self._values.sort(key=len, reverse=True)  # a secret containing another is masked whole

    def scrub(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: self.scrub(v) if isinstance(v, str) else v for k, v in fields.items()}
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_text:
            out["traceback"] = record.exc_text
        # ASCII: a plugin's log line may hold C1 controls or bidi overrides, which a UTF-8
        # terminal tailing the journal would act on; escaped, the line is exact and inert
        return json.dumps(out, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """The message followed by ``key=value`` fields, for rich's handler on a terminal; plugin
    text in them is made ``safe`` (no escape sequence reaches the terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        text = safe(record.getMessage())
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            extra = [safe(f"{k}={v}", keep_newlines=False) for k, v in fields.items() if v is not None]
            extra = [e for e in extra if e not in text]
            if extra:
                text += "  " + " ".join(extra)
        if record.exc_text:
            text += "\n" + safe(record.exc_text)
        return text


def setup(level: str = "info", *, stream: TextIO | None = None, tty: bool | None = None) -> Redactor:
    """Route every logger (ours and uvicorn's) to one stderr handler; return its redactor."""
    stream = stream or sys.stderr
    if tty is None:
        tty = hasattr(stream, "isatty") and stream.isatty()
    handler: logging.Handler
    if tty:
        import os

        from rich.console import Console
        from rich.logging import RichHandler

        console = Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(TextFormatter())
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    redactor = Redactor()
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("uvicorn.access").disabled = True  # the API logs what matters itself, without headers
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # "Started server process" says nothing new
    return redactor


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """``logger.log`` with named fields (kept as JSON keys, or ``k=v`` on a terminal)."""
    logger.log(level, msg, extra={"fields": fields})
