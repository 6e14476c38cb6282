"""Where vault operations are recorded: names, actors and outcomes, never values.

``AuditSink`` is the seam: the vault calls ``record`` for every lifecycle operation and every
compose failure or denial. ``StateAuditSink`` writes the state database's ``vault_audit``
table (read by ``ductile vault audit``); tests use ``MemoryAuditSink``.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ductile.config.model import Config

if TYPE_CHECKING:
    from ductile.state.audit import AuditLog

# op names (lifecycle, then compose)
OP_INIT = "init"
OP_SET = "set"
OP_GRANT = "grant"
OP_REVOKE = "revoke"
OP_PRINCIPAL_ADD = "principal_add"
OP_PRINCIPAL_REVOKE = "principal_revoke"
OP_ROTATE_KEY = "rotate_key"
OP_RECOVER = "recover"
OP_COMPOSE_REFUSED = "compose_refused"
OP_COMPOSE_DENIAL = "compose_denial"

# outcomes
ATTEMPT = "attempt"  # written before the vault is touched: a crash leaves the attempt on record
OK = "ok"
REFUSED = "refused"
DENIED = "denied"

ACTOR_GATEWAY = "gateway"


class AuditSink(Protocol):
    """Receives one row per vault event. Arguments are names and short reasons only."""

    def record(self, op: str, principal: str, actor: str, outcome: str, detail: str) -> None: ...


@dataclass(frozen=True)
class AuditRecord:
    op: str
    principal: str
    actor: str
    outcome: str
    detail: str


@dataclass
class MemoryAuditSink:
    """Keeps rows in a list; for tests and for commands that want to show what they recorded."""

    records: list[AuditRecord] = field(default_factory=list)

    def record(self, op: str, principal: str, actor: str, outcome: str, detail: str) -> None:
        self.records.append(AuditRecord(op, principal, actor, outcome, detail))


class NullAuditSink:
    """Drops every row (for pure tests only; commands and the gateway always audit)."""

    def record(self, op: str, principal: str, actor: str, outcome: str, detail: str) -> None:
        return None


class StateAuditSink:
    """The durable sink: one ``vault_audit`` row per call, in its own transaction."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def record(self, op: str, principal: str, actor: str, outcome: str, detail: str) -> None:
        self.audit.record_audit(op, principal, actor, outcome, {"detail": detail} if detail else None)


def describe_detail(detail: object) -> str:
    """One line for the DETAIL column, whatever shape a row's detail has: the vault's own
    rows carry ``{"detail": text}``; the gateway's secret_ref reads carry ``{"ref", "why"}``."""
    if detail is None or detail == {}:
        return ""
    if not isinstance(detail, dict):
        return str(detail)
    if set(detail) == {"detail"}:
        return str(detail["detail"])
    return " ".join(f"{k}={v}" for k, v in detail.items())


def default_sink(config: Config) -> AuditSink:
    """The state database's audit table. Opening it first means a vault operation that
    cannot be audited is refused before it happens, not silently unrecorded."""
    from ductile.state.db import open_state

    return StateAuditSink(open_state(config.state.path).audit)


def cli_actor() -> str:
    """Who ran a vault command: ``cli:<user>`` (or ``cli:uid=N`` for an account with no name)."""
    uid = os.geteuid()
    try:
        return f"cli:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"cli:uid={uid}"
