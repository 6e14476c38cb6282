"""What a plugin may emit: the gateway's namespaces are closed to plugins, and one answer
carries a bounded number of events. Pure.

    event type                                   from a plugin
    plugin.*  pipeline.*  job.*  api.*  ductile.*  dropped (the gateway's own namespaces)
    webhook, webhooks.x, webhook_x ... (webhook*) dropped
    outside [A-Za-z0-9_.:-], or over 200 chars    dropped (could not be routed or shown safely)
    anything else                                 kept, up to service.max_events_per_response

The names are compared case-insensitively, so ``Plugin.Account_Downgraded`` is as closed as
the real thing. A dropped event never fails the job (the work it did still happened); the
job carries one warning per reason instead, with a count, so 30 000 spoofed events cost one
line in the ledger, not 30 000.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

RESERVED_PREFIXES = ("plugin", "pipeline", "job", "api", "ductile")  # each: the name itself and name.*
RESERVED_STEM = "webhook"                                            # anything that starts with it
EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_SHOWN = 60


class HasType(Protocol):
    @property
    def type(self) -> str: ...


E = TypeVar("E", bound=HasType)


def reserved(event_type: str) -> str | None:
    """The gateway namespace ``event_type`` falls in (``plugin.*``, ``webhook*``...), or None."""
    low = event_type.lower()
    if low.startswith(RESERVED_STEM):
        return RESERVED_STEM + "*"
    for prefix in RESERVED_PREFIXES:
        if low == prefix or low.startswith(prefix + "."):
            return prefix + ".*"
    return None


def reserved_namespaces() -> tuple[str, ...]:
    """The closed namespaces as the docs and messages name them."""
    return tuple(p + ".*" for p in RESERVED_PREFIXES) + (RESERVED_STEM + "*",)


def _shown(event_type: str) -> str:
    text = event_type.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def screen(events: Sequence[E], *, max_events: int) -> tuple[list[E], list[str]]:
    """The events a plugin's answer may keep, and one warning per reason for the rest."""
    kept: list[E] = []
    bad_type: list[str] = []
    closed: dict[str, list[str]] = {}
    over = 0
    for event in events:
        etype = event.type
        if not EVENT_TYPE.match(etype):
            bad_type.append(etype)
            continue
        namespace = reserved(etype)
        if namespace is not None:
            closed.setdefault(namespace, []).append(etype)
            continue
        if len(kept) >= max_events:
            over += 1
            continue
        kept.append(event)
    warnings: list[str] = []
    for namespace, types in closed.items():
        warnings.append(f"dropped {_count(len(types), 'event')} in the gateway's namespace {namespace} "
                        f"(e.g. {_shown(types[0])}): only the gateway emits those")
    if bad_type:
        warnings.append(f"dropped {_count(len(bad_type), 'event')} whose type is not 1-200 of [A-Za-z0-9_.:-] "
                        f"(e.g. {_shown(bad_type[0])})")
    if over:
        warnings.append(f"dropped {_count(over, 'event')} past service.max_events_per_response ({max_events}); "
                        "only the first were kept")
    return kept, warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
