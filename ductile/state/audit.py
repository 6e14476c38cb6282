"""The vault audit trail: every vault lifecycle operation and every compose failure
(SPEC §7). Names only — the vault layer never passes a value; the caps here are a
second line of defence so a mistake there cannot write a whole secret or grow the
database without bound."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ductile.state.codec import clip, from_json, iso, to_json
from ductile.state.db import StateDB

FIELD_MAX = 128    # characters of op / principal / actor / outcome
STRING_MAX = 256   # characters of any one string inside detail
DETAIL_MAX = 4096  # characters of the whole detail JSON


def _cap(value: Any, depth: int = 0) -> Any:
    """``value`` with every string clipped; containers nested deeper than 4 are summarised."""
    if isinstance(value, str):
        return clip(value, STRING_MAX)
    if isinstance(value, Mapping):
        return {clip(str(k), STRING_MAX): _cap(v, depth + 1) for k, v in value.items()} if depth < 4 else "…"
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_cap(v, depth + 1) for v in value] if depth < 4 else "…"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return clip(type(value).__name__, STRING_MAX)


def bounded_detail(detail: Mapping[str, Any] | None) -> str:
    """The detail as JSON text no longer than ``DETAIL_MAX``."""
    text = to_json(_cap(dict(detail or {})), field="audit.detail")
    if len(text) > DETAIL_MAX:
        text = to_json({"truncated": True, "keys": [clip(str(k), 64) for k in list(detail or {})[:32]]},
                       field="audit.detail")  # 32 keys x 64 characters: always under DETAIL_MAX
    return text


class AuditLog:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def record_audit(self, op: str, principal: str | None, actor: str, outcome: str,
                     detail: Mapping[str, Any] | None = None) -> None:
        """One row: ``op`` (``secret.set``, ``compose``...), on ``principal``, by ``actor``
        (an OS user or API token name), ``outcome`` (``ok``, ``denied``...), ``detail`` (names)."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO vault_audit (at, op, principal, actor, outcome, detail)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         (self.clock(), clip(op, FIELD_MAX), clip(principal, FIELD_MAX), clip(actor, FIELD_MAX),
                          clip(outcome, FIELD_MAX), bounded_detail(detail)))

    def list_audit(self, limit: int = 100, principal: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = ("WHERE principal = ?", [principal]) if principal is not None else ("", [])
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT * FROM vault_audit {where} ORDER BY id DESC LIMIT ?",
                                (*args, max(0, limit))).fetchall()
        return [{"at": iso(r["at"]), "op": r["op"], "principal": r["principal"], "actor": r["actor"],
                 "outcome": r["outcome"], "detail": from_json(r["detail"])} for r in rows]
