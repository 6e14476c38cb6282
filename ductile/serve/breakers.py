"""What ``ductile system breaker`` shows: every plugin with schedules (or a breaker on
record), its breaker's state and its policy. One function, used by the running gateway's
control handler and by the command when no gateway runs (read from the database)."""

from __future__ import annotations

from typing import Any

from ductile.config.model import Config
from ductile.state.breakers import Breaker
from ductile.state.db import StateDB


def breaker_report(db: StateDB, config: Config, plugin: str | None = None,
                   reset: list[str] | None = None) -> dict[str, Any]:
    known = db.breakers.all()
    names = sorted({n for n, pc in config.plugins.items() if pc.schedules} | set(known))
    if plugin is not None:
        names = [plugin]
    rows = []
    for name in names:
        b = known.get(name) or Breaker(name)
        pc = config.plugins.get(name)
        rows.append({**b.as_dict(), "threshold": pc.breaker.threshold if pc else None,
                     "reset_after_seconds": pc.breaker.reset_after if pc else None,
                     "configured": pc is not None})
    return {"breakers": rows, "reset": list(reset or [])}
