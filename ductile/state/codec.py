"""How values become columns and back: JSON text, epoch seconds, bounded text tails."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ductile.errors import StateError

STDERR_TAIL_MAX = 64 * 1024  # bytes of a plugin's stderr kept per attempt (SPEC §4)


def to_json(value: Any, *, field: str) -> str:
    """JSON text for a column; a value JSON cannot hold is refused naming the field."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise StateError(f"{field} cannot be stored as JSON: {err}", where=field,
                         fix="pass only dicts, lists, strings, numbers, booleans and None") from err


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with millisecond precision (``...Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tail_text(data: str | bytes | None, limit: int = STDERR_TAIL_MAX) -> str | None:
    """The last ``limit`` bytes as text; undecodable bytes become U+FFFD, never an error."""
    if data is None:
        return None
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    text = _last_bytes(raw, limit).decode("utf-8", "replace")
    encoded = text.encode("utf-8")
    if len(encoded) > limit:  # U+FFFD takes 3 bytes where the bad byte took 1: cut again
        text = _last_bytes(encoded, limit).decode("utf-8")
    return text


def _last_bytes(raw: bytes, limit: int) -> bytes:
    """The last ``limit`` bytes, stepping past UTF-8 continuation bytes left at the cut."""
    if len(raw) <= limit:
        return raw
    raw = raw[-limit:]
    cut = 0
    while cut < min(3, len(raw)) and raw[cut] & 0xC0 == 0x80:
        cut += 1
    return raw[cut:]


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, marked when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"
