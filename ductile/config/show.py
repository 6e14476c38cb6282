"""Plain views of a configuration for ``config show``, with secret-looking values redacted.

The model never holds secret values (tokens and HMAC keys are ``secret_ref`` names into
the vault), but the free-form ``plugins.<name>.config`` and schedule ``payload`` maps are
written by operators and may; values under secret-looking keys there are redacted by the
one rule in ``ductile.redact`` (the API and the job ledger use the same one).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ductile.config.decode import hints_of, is_optional, yaml_key
from ductile.config.model import Config
from ductile.config.units import format_duration
from ductile.redact import redact

def _redact_free_form(view: dict[str, Any]) -> dict[str, Any]:
    for plugin in (view.get("plugins") or {}).values():
        if isinstance(plugin, dict):
            if "config" in plugin:
                plugin["config"] = redact(plugin["config"])
            for sched in plugin.get("schedules") or []:
                if isinstance(sched, dict) and "payload" in sched:
                    sched["payload"] = redact(sched["payload"])
    return view


def raw_view(raw: dict[str, Any]) -> dict[str, Any]:
    return _redact_free_form(copy.deepcopy(raw))


def _plain(hint: Any, meta: Any, value: Any) -> Any:
    _, hint = is_optional(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(value):
        hints = hints_of(type(value))
        return {yaml_key(f): _plain(hints[f.name], f.metadata, getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        args = getattr(hint, "__args__", (Any,))
        return [_plain(args[0], meta, v) for v in value]
    if isinstance(value, dict):
        pair: tuple[Any, ...] = getattr(hint, "__args__", (str, Any))
        return {k: _plain(pair[1] if len(pair) > 1 else Any, meta, v) for k, v in value.items()}
    if meta.get("kind") == "duration" and isinstance(value, (int, float)):
        return format_duration(value)
    if meta.get("kind") == "percent" and isinstance(value, int):
        return f"{value}%"
    return value


def effective_view(config: Config) -> dict[str, Any]:
    """Every key with its effective value (defaults filled, paths absolute); reloadable as YAML."""
    view = _plain(Config, {}, config)
    view.pop("include", None)  # already merged
    return _redact_free_form(view)
