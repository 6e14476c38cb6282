"""The running gateway's operational facts, gathered once for every reader: ``/healthz``,
``ductile system status`` (over the control channel) and ``/metrics`` show the same
breakers and reload results because they call these functions."""

from __future__ import annotations

from typing import Any

from ductile.errors import DuctileError
from ductile.serve.reload import ReloadHistory
from ductile.state.db import StateDB


def breakers(db: StateDB) -> list[dict[str, Any]] | None:
    """Every breaker the database knows, closed ones included (metrics want them); None
    when the database cannot be read (reported elsewhere, not a 500)."""
    try:
        return [b.as_dict() for b in db.breakers.all().values()]
    except DuctileError:
        return None


def open_breakers(found: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The breakers that pause schedules now (open or half-open)."""
    return [b for b in found or [] if b["state"] != "closed"]


def ops(db: StateDB, reloads: ReloadHistory, generation: int) -> dict[str, Any]:
    """Breakers (the ones not closed) and reload results, as /healthz and status show them."""
    return {"breakers": open_breakers(breakers(db)), "reloads": {**reloads.as_dict(), "generation": generation}}
