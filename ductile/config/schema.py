"""JSON Schema (draft 2020-12) of the configuration, generated from the model.

The same type hints and field specs drive the decoder, so the schema cannot drift from
what ``load_config`` accepts; ``tests/test_config_schema.py`` checks the two agree on
valid and broken documents alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_origin

from ductile.config.decode import (CRON_PATTERN, LISTEN_PATTERN, PATH_PATTERN, TIMEZONE_PATTERN, alternatives, hints_of,
                                    is_optional, yaml_key)
from ductile.config.model import Config
from ductile.config.units import DURATION_PATTERN, INSTANT_PATTERN, PERCENT_PATTERN, SIZE_PATTERN

SCHEMA_ID = "https://ductile.invalid/schema/config.json"


def _leaf(hint: Any, meta: dict[str, Any]) -> dict[str, Any]:
    kind = meta.get("kind")
    if hint is bool:
        return {"type": "boolean"}
    if hint is float and kind == "duration":
        return {"type": "string", "pattern": DURATION_PATTERN}
    if hint is int and kind == "size":
        return {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}]}
    if hint is int and kind == "percent":
        return {"type": "string", "pattern": PERCENT_PATTERN}
    if hint is int:
        out: dict[str, Any] = {"type": "integer"}
        if meta.get("minimum") is not None:
            out["minimum"] = meta["minimum"]
        if meta.get("maximum") is not None:
            out["maximum"] = meta["maximum"]
        return out
    if hint is str:
        out = {"type": "string"}
        if meta.get("pattern"):
            out["pattern"] = meta["pattern"]
        if kind == "path":
            out["pattern"] = PATH_PATTERN
        if kind == "abspath":
            out["pattern"] = r"^/[^\x00]*$"
        if kind == "listen":
            out["pattern"] = LISTEN_PATTERN
        if kind == "cron":
            out["pattern"] = CRON_PATTERN
        if kind == "timezone":
            out["pattern"] = TIMEZONE_PATTERN
        if kind == "instant":
            out["pattern"] = INSTANT_PATTERN
        return out
    raise TypeError(f"no schema for {hint!r}")  # pragma: no cover


def _node(hint: Any, meta: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    optional, hint = is_optional(hint)
    origin = get_origin(hint)
    if len(alternatives(hint)) > 1:
        node: dict[str, Any] = {"anyOf": [_node(alt, meta, defs) for alt in alternatives(hint)]}
    elif dataclasses.is_dataclass(hint):
        name = hint.__name__  # type: ignore[union-attr]
        if name not in defs:
            defs[name] = {}  # reserve against recursion
            defs[name] = _object(hint, defs)  # type: ignore[arg-type]
        node = {"$ref": f"#/$defs/{name}"}
        shorthand = getattr(hint, "SHORTHAND", None)
        if shorthand is not None:  # the one field's value alone stands for the mapping
            short = next(f for f in dataclasses.fields(hint) if f.name == shorthand)  # type: ignore[arg-type]
            node = {"anyOf": [_node(hints_of(hint)[shorthand], dict(short.metadata), defs), node]}  # type: ignore[arg-type]
    elif origin is Literal:
        node = {"enum": list(get_args(hint))}
    elif origin is tuple:
        item = _node(get_args(hint)[0], meta, defs)
        node = {"type": "array", "items": item}
        if meta.get("min_items"):
            node["minItems"] = meta["min_items"]
        if meta.get("one_or_many"):
            node = {"anyOf": [item, node]}
    elif origin is dict:
        node = {"type": "object", "additionalProperties": _node(get_args(hint)[1], meta, defs)}
        if meta.get("key_pattern"):
            node["propertyNames"] = {"pattern": meta["key_pattern"]}
    elif hint is Any:
        node = {}
    else:
        node = _leaf(hint, meta)
    if optional:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    hints = hints_of(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        prop = _node(hints[f.name], meta, defs)
        prop["description"] = meta.get("doc", "")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(yaml_key(f))
        props[yaml_key(f)] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def config_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    root = _object(Config, defs)
    # `include` may also be one string in YAML (the loader accepts both)
    root["properties"]["include"] = {"anyOf": [{"type": "string"}, root["properties"]["include"]],
                                     "description": root["properties"]["include"]["description"]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "ductile configuration", **root, "$defs": defs}
