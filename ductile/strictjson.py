"""One rule for reading JSON that someone else wrote: API bodies, webhook deliveries,
plugin responses and ``--payload``. Pure.

Python's ``json`` module is lenient where an attacker can hurt: it accepts ``NaN`` and
``Infinity`` (which no other JSON reader does, and which the request encoder then refuses,
failing the job long after the 202), turns ``1e999`` into infinity, raises
``RecursionError`` on deep nesting and ``ValueError`` on integers past 4300 digits (both
of which surfaced as 500s). Here each of those is a ``JsonRefused`` with a one-line
reason, decided before anything is stored:

    nesting deeper than MAX_DEPTH              refused (checked without recursion)
    an integer longer than MAX_INT_DIGITS      refused before it is converted
    NaN, Infinity, -Infinity                   refused
    a number that overflows to infinity        refused
    anything else json accepts                 accepted
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 128        # containers inside containers; real payloads stay far below
MAX_INT_DIGITS = 64    # enough for any id or 128-bit counter, far below Python's 4300


class JsonRefused(ValueError):
    """JSON that parses in Python but must not be accepted; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotJson(ValueError):
    """Text that is not JSON at all (a syntax error); ``reason`` is one line."""

    def __init__(self, reason: str, pos: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pos = pos


def _constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON value")


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JsonRefused(f"an integer has {digits} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else text[:21] + "..."
        raise JsonRefused(f"the number {shown} is out of range (it would be infinite)")
    return value


DECODER = json.JSONDecoder(parse_constant=_constant, parse_int=_integer, parse_float=_number)


def depth(value: Any) -> int:
    """Nesting depth without recursion, so the check itself cannot overflow the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in node)
    return deepest


def raw_decode(text: str, start: int = 0) -> tuple[Any, int]:
    """``DECODER.raw_decode`` under the rule: (value, end) or JsonRefused / NotJson."""
    try:
        value, end = DECODER.raw_decode(text, start)
    except RecursionError:
        raise JsonRefused(f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as err:
        raise NotJson(f"{err.msg} at line {err.lineno} column {err.colno}", err.pos) from None
    except JsonRefused:
        raise
    except ValueError as err:  # anything else int()/float() might still say; never a 500
        raise JsonRefused(f"unusable number ({str(err).split(':')[0]})") from None
    if depth(value) > MAX_DEPTH:
        raise JsonRefused(f"JSON nests deeper than {MAX_DEPTH} levels")
    return value, end


def loads(text: str) -> Any:
    """One JSON document (surrounding whitespace allowed) under the rule."""
    start = len(text) - len(text.lstrip())
    value, end = raw_decode(text, start)
    if text[end:].strip():
        raise NotJson("extra data after the JSON value", end)
    return value
