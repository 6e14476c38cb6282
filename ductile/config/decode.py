"""Strict, pure decoding of plain YAML data into the frozen model.

Walks the dataclass type hints and each field's ``spec`` metadata, so the decoder, the JSON
Schema and the docs cannot disagree about what a key accepts. Problems are collected (not
raised) with the dotted path of the offending key, so ``doctor`` can list them all and the
loader can report the first one with its file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from ductile.config.units import parse_duration, parse_instant, parse_percent, parse_size

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    fix: str = ""
    # "unit-range": a bound on a duration/size value, which JSON Schema cannot express
    rule: str = ""


def dotted(path: Path) -> str:
    """``('pipelines', 0, 'steps')`` -> ``pipelines[0].steps``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


_HINTS: dict[type, dict[str, Any]] = {}


def hints_of(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def yaml_key(f: dataclasses.Field[Any]) -> str:
    """The YAML key of a model field: its ``key`` metadata (``from``) or its name."""
    return str(f.metadata.get("key") or f.name)


def is_optional(hint: Any) -> tuple[bool, Any]:
    """(None allowed, the hint without None): ``X | None`` -> X; ``X | Y | None`` -> X | Y."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) < len(get_args(hint)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, hint


def alternatives(hint: Any) -> tuple[Any, ...]:
    """The members of a union hint (after ``is_optional``), or ``(hint,)``."""
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


_PORT = r"([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])"
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):" + _PORT + "$"
CRON_PATTERN = r"^\s*[\d*/,A-Za-z?-]+(\s+[\d*/,A-Za-z?-]+){4}\s*$"
PATH_PATTERN = r"^[^\x00]+$"
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


class Decoder:
    """``Decoder(resolve_path).decode(Config, data)``; read ``.problems`` afterwards.

    ``resolve_path(path, text)`` turns a relative ``kind="path"`` value into an absolute
    one; the loader anchors it at the file that declared the key.
    """

    def __init__(self, resolve_path: Callable[[Path, str], str] | None = None) -> None:
        self.problems: list[Problem] = []
        self._resolve = resolve_path or (lambda _path, text: posixpath.normpath(text))

    def problem(self, path: Path, message: str, fix: str = "", rule: str = "") -> None:
        self.problems.append(Problem(path, message, fix, rule))

    def decode(self, cls: type, data: Any, path: Path = ()) -> Any:
        if not isinstance(data, dict):
            self.problem(path, f"must be a mapping, got {type_name(data)}", "write key: value pairs here")
            return None
        fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(fields)}"
                self.problem(path + (str(key),), f"unknown key '{key}'", f"remove it or correct the spelling ({hint})")
        values: dict[str, Any] = {}
        hints = hints_of(cls)
        for key, f in fields.items():
            name = f.name
            if key in data:
                values[name] = self.convert(hints[name], data[key], f.metadata, path + (key,))
            elif f.default is not dataclasses.MISSING:
                values[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[name] = f.default_factory()
            else:
                self.problem(path + (key,), f"required key '{key}' is missing", f"add {key}: ({f.metadata['doc']})")
                values[name] = None
        try:
            return cls(**values)
        except TypeError:  # pragma: no cover - every field is supplied above
            return None

    def convert(self, hint: Any, value: Any, meta: typing.Mapping[str, Any], path: Path) -> Any:
        if hint is Any:
            return value
        optional, inner = is_optional(hint)
        if value is None:
            if optional:
                return None
            self.problem(path, "must not be empty (null)", "give it a value or remove the key to use the default")
            return None
        hint = inner
        if len(alternatives(hint)) > 1:
            return self._union(alternatives(hint), value, meta, path)
        origin = get_origin(hint)
        if dataclasses.is_dataclass(hint):
            shorthand = getattr(hint, "SHORTHAND", None)
            if shorthand is not None and not isinstance(value, dict):
                value = {shorthand: value}  # on: echo.done == on: {event: echo.done}
            return self.decode(hint, value, path)  # type: ignore[arg-type]
        if origin is Literal:
            choices = get_args(hint)
            if value not in choices:
                self.problem(path, f"must be one of {', '.join(map(str, choices))}; got {value!r}",
                             f"use one of {', '.join(map(str, choices))}")
            return value
        if origin is tuple:
            return self._sequence(get_args(hint)[0], value, meta, path)
        if origin is dict:
            return self._mapping(get_args(hint)[1], value, meta, path)
        return self._scalar(hint, value, meta, path)

    def _union(self, alts: tuple[Any, ...], value: Any, meta: typing.Mapping[str, Any], path: Path) -> Any:
        """A value that may take one of several shapes (``filesystem: unrestricted`` or a
        mapping): the shape of the YAML value picks the alternative."""
        for alt in alts:
            if isinstance(value, dict) and (dataclasses.is_dataclass(alt) or get_origin(alt) is dict):
                return self.convert(alt, value, meta, path)
            if isinstance(value, str) and get_origin(alt) is Literal and value in get_args(alt):
                return value
            if isinstance(value, list) and get_origin(alt) is tuple:
                return self.convert(alt, value, meta, path)
        words = [f"'{c}'" for alt in alts if get_origin(alt) is Literal for c in get_args(alt)]
        words += ["a mapping" for alt in alts if dataclasses.is_dataclass(alt)]
        self.problem(path, f"must be {' or '.join(words)}; got {type_name(value)} {value!r}",
                     f"write {' or '.join(words)}")
        return None

    def _sequence(self, item: Any, value: Any, meta: typing.Mapping[str, Any], path: Path) -> Any:
        if meta.get("one_or_many") and not isinstance(value, list):
            value = [value]  # from: lowly == from: [lowly]
        if not isinstance(value, list):
            self.problem(path, f"must be a list, got {type_name(value)}", "write it as a YAML list ([a, b] or '- a' lines)")
            return ()
        if meta.get("min_items") and len(value) < meta["min_items"]:
            self.problem(path, f"needs at least {meta['min_items']} item(s)", "add an entry")
        return tuple(self.convert(item, v, meta, path + (i,)) for i, v in enumerate(value))

    def _mapping(self, item: Any, value: Any, meta: typing.Mapping[str, Any], path: Path) -> Any:
        if not isinstance(value, dict):
            self.problem(path, f"must be a mapping, got {type_name(value)}", "write key: value pairs here")
            return {}
        out = {}
        key_pattern = meta.get("key_pattern")
        for key, v in value.items():
            if not isinstance(key, str):
                self.problem(path + (str(key),), f"key {key!r} must be a string", "quote the key")
                continue
            if key_pattern and not re.fullmatch(key_pattern, key):
                hint = meta.get("key_pattern_hint") or f"a name matching {key_pattern}"
                self.problem(path + (key,), f"name '{key}' is not valid: a name is {hint}", f"rename it: {hint}")
            out[key] = self.convert(item, v, meta, path + (key,))
        return out

    def _range(self, number: float, meta: typing.Mapping[str, Any], path: Path, shown: str) -> None:
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
                f"at least {lo}" if lo is not None else f"at most {hi}")
            why = f" — {meta['why']}" if meta.get("why") else ""
            rule = "unit-range" if meta.get("kind") in ("duration", "size", "percent") else ""
            self.problem(path, f"must be {bounds}, got {shown}{why}", f"set a value {bounds}", rule)

    def _scalar(self, hint: Any, value: Any, meta: typing.Mapping[str, Any], path: Path) -> Any:
        kind = meta.get("kind")
        if hint is bool:
            if not isinstance(value, bool):
                self.problem(path, f"must be true or false, got {type_name(value)} {value!r}", "write true or false")
            return value
        if hint is float and kind == "duration":
            if not isinstance(value, str):
                self.problem(path, f"must be a duration such as 30s, got {type_name(value)} {value!r}",
                             f"write {value}s for seconds (units: ms, s, m, h, d)")
                return None
            try:
                seconds = parse_duration(value)
            except ValueError as err:
                self.problem(path, str(err), "units are ms, s, m, h, d")
                return None
            self._range(seconds, meta, path, value)
            return seconds
        if hint is int and kind == "size":
            try:
                size = parse_size(value)
            except ValueError as err:
                self.problem(path, str(err), "write bytes as a number or with B, KiB, MiB, GiB")
                return None
            self._range(size, meta, path, str(value))
            return size
        if hint is int and kind == "percent":
            try:
                percent = parse_percent(value)
            except ValueError as err:
                self.problem(path, str(err), "write a whole number followed by %")
                return None
            self._range(percent, meta, path, str(value))
            return percent
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.problem(path, f"must be an integer, got {type_name(value)} {value!r}", "write a whole number")
                return None
            self._range(value, meta, path, str(value))
            return value
        if hint is str:
            if not isinstance(value, str):
                self.problem(path, f"must be a string, got {type_name(value)} {value!r}", "quote the value")
                return None
            return self._text(value, meta, path)
        raise TypeError(f"unsupported model type {hint!r} at {dotted(path)}")  # pragma: no cover

    def _text(self, value: str, meta: typing.Mapping[str, Any], path: Path) -> str | None:
        kind = meta.get("kind")
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            hint = meta.get("pattern_hint") or f"must match {pattern}"
            self.problem(path, f"{value!r} is not valid: {hint}", f"write it as {hint}")
            return value
        if kind in ("path", "abspath") and not re.fullmatch(PATH_PATTERN, value):
            self.problem(path, "must be a non-empty path", "give a path")
            return None
        if kind == "abspath":
            if not value.startswith("/"):
                self.problem(path, f"{value!r} must be an absolute path",
                             f"write the full path, e.g. /var/lib/ductile/accounts/{path[-2] if len(path) > 1 else 'x'}")
                return value
            return posixpath.normpath(value)
        if kind == "path":
            return self._resolve(path, value)
        if kind == "listen":
            if not re.fullmatch(LISTEN_PATTERN, value):
                self.problem(path, f"{value!r} is not host:port", "write e.g. 127.0.0.1:8080")
            return value
        if kind == "cron":
            if not re.fullmatch(CRON_PATTERN, value):
                self.problem(path, f"{value!r} is not a five-field cron expression",
                             "write minute hour day-of-month month day-of-week, e.g. '0 7 * * *'")
            return value
        if kind == "instant":
            try:
                parse_instant(value)
            except ValueError as err:
                self.problem(path, str(err), "write an RFC 3339 timestamp with its offset, e.g. 2026-03-29T09:30:00+02:00")
            return value
        if kind == "timezone":
            if not is_zone(value):
                self.problem(path, f"{value!r} is not a time zone in the zone database",
                             "write an IANA name such as Europe/Berlin, America/New_York or UTC "
                             "(the names under /usr/share/zoneinfo)")
            return value
        return value


def is_zone(name: str) -> bool:
    """An IANA zone name the host's zone database knows (``zoneinfo`` refuses paths itself)."""
    if not re.fullmatch(TIMEZONE_PATTERN, name):
        return False
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
