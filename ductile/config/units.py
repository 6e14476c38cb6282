"""Durations (``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1h30m``) and byte sizes (``4MiB``)."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"

_SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}
SIZE_PATTERN = r"^\d+(B|KB|MB|GB|KiB|MiB|GiB)?$"
_SIZE = re.compile(r"^(\d+)(B|KB|MB|GB|KiB|MiB|GiB)?$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError naming the accepted forms otherwise."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text.strip()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 30s, 5m, 2h, 1d or 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text.strip()))


def parse_size(value: int | str) -> int:
    """Bytes in ``value`` (an int, or ``4MiB``-style text)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is not a size: must not be negative")
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a size; write e.g. 65536, 64KiB or 4MiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]


PERCENT_PATTERN = r"^\d+%$"


def parse_percent(value: str) -> int:
    """``"50%"`` -> 50; ValueError naming the accepted form otherwise."""
    if not isinstance(value, str) or not re.fullmatch(PERCENT_PATTERN, value.strip()):
        raise ValueError(f"{value!r} is not a percentage; write e.g. 50% (one CPU is 100%)")
    return int(value.strip()[:-1])


def format_size(n: int) -> str:
    """``n`` bytes for a person: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (GiB at most)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` (inverse of parse_duration for round values)."""
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})$"


def parse_instant(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp; its offset is required (a bare local time
    would mean whatever zone the host happens to be in)."""
    from datetime import datetime

    if not isinstance(text, str) or not re.fullmatch(INSTANT_PATTERN, text.strip()):
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp with an offset; write e.g. 2026-03-29T09:30:00+02:00 "
                         "or 2026-03-29T07:30:00Z")
    value = text.strip()
    if value[-1] in "Zz":
        value = value[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as err:
        raise ValueError(f"{text!r} is not a valid timestamp: {err}") from None


_NAIVE = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$"


def parse_when(text: str, now: float) -> float:
    """Epoch seconds for ``--since``/``--until``: an age (``2h``: two hours before ``now``),
    an RFC 3339 timestamp with its offset, or a date or date-time without one, read on the
    host's wall clock (``2026-03-29``, ``2026-03-29T08:00``)."""
    from datetime import datetime

    value = text.strip() if isinstance(text, str) else ""
    if re.fullmatch(DURATION_PATTERN, value):
        return now - parse_duration(value)
    if re.fullmatch(INSTANT_PATTERN, value):
        return parse_instant(value)
    if re.fullmatch(_NAIVE, value):
        try:
            return datetime.fromisoformat(value.replace("t", "T")).timestamp()  # naive: the host's zone
        except ValueError:
            pass
    raise ValueError(f"{text!r} is not a time: write an age (30m, 2h, 7d), a date (2026-03-29), a local time "
                     "(2026-03-29T08:00) or an RFC 3339 timestamp (2026-03-29T08:00:00+02:00)")
