"""The event log: what plugins emitted (routed to pipelines) and what the gateway itself
reports about them (``plugin.drop_failed``, ``plugin.account_downgraded``, ...), kept so
``ductile job show`` can say what a job caused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ductile.errors import StateError
from ductile.redact import redact
from ductile.state.codec import from_json, iso, to_json
from ductile.state.db import StateDB


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    payload: Any
    source_job_id: str | None
    plugin: str | None
    depth: int
    created_at: float
    dedupe_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as readers see it: its payload under the one redaction rule."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["created_at"] = iso(self.created_at)
        out["payload"] = redact(self.payload)
        return out


class EventLog:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def record_event(self, type: str, payload: Any, *, source_job_id: str | None = None,
                     plugin: str | None = None, depth: int = 0, dedupe_key: str | None = None) -> str:
        """Store one event and return its id. ``depth`` counts pipeline hops from the root job;
        ``dedupe_key`` is the plugin's own key for what the event is about (upstream protocol)."""
        if not isinstance(type, str) or not type:
            raise StateError(f"event type must be a non-empty string, got {type!r}", where="event.type",
                             fix="name the event, e.g. echo.done")
        if not isinstance(depth, int) or depth < 0:
            raise StateError(f"event depth must be an integer >= 0, got {depth!r}", where="event.depth",
                             fix="pass the number of pipeline hops (0 for a root job)")
        event_id = str(uuid.uuid4())
        with self.db.write() as conn:
            conn.execute("INSERT INTO events (id, type, payload, source_job_id, plugin, depth, created_at, dedupe_key)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (event_id, type, to_json(payload, field=f"event {type} payload"), source_job_id,
                          plugin, depth, self.clock(), dedupe_key))
        return event_id

    def list_events(self, job_id: str | None = None, type: str | None = None, limit: int = 100) -> list[Event]:
        """The most recent ``limit`` events matching, oldest first (the order they happened)."""
        clauses, args = [], []
        if job_id is not None:
            clauses.append("source_job_id = ?")
            args.append(job_id)
        if type is not None:
            clauses.append("type = ?")
            args.append(type)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT * FROM events{where} ORDER BY rowid DESC LIMIT ?",
                                (*args, max(0, limit))).fetchall()
        return [Event(**{**{k: r[k] for k in r.keys()}, "payload": from_json(r["payload"])}) for r in reversed(rows)]
