"""The read side of the job ledger, shared by ``ductile job`` and the HTTP API: open the
configured database without creating it, and gather one job's whole story in one snapshot."""

from __future__ import annotations

from typing import Any

from ductile.errors import StateError
from ductile.state.db import StateDB, open_state


def open_ledger(config_path: str | None, *, write: bool = False) -> StateDB:
    """The state database named by the config's ``state.path``; a missing one is refused.
    ``write``: opened for writing (``job prune``), still never created."""
    import os

    from ductile.config import load_config

    loaded = load_config(config_path)
    try:
        if write and os.path.lexists(loaded.config.state.path):
            return open_state(loaded.config.state.path)
        return open_state(loaded.config.state.path, create=False)
    except StateError as err:
        if err.where == "state.path":  # point at the line to edit, not just the key
            err.where = f"{loaded.where('state.path') or loaded.path}: state.path"
        raise


def job_report(db: StateDB, id_or_prefix: str, *, event_limit: int = 100) -> dict[str, Any]:
    """Everything about one job: the row, each attempt, each transition, the events it
    emitted, and its chain: the jobs above it (parent first) and the jobs its events started."""
    with db.read():
        job = db.jobs.resolve(id_or_prefix)
        if job is None:
            raise StateError(f"no such job in {db.path}", where=f"job {id_or_prefix}",
                             fix="`ductile job list` shows the job ids")
        return {
            "job": job.as_dict(),
            "attempts": [a.as_dict() for a in db.jobs.attempts(job.id)],
            "transitions": [t.as_dict() for t in db.jobs.transitions(job.id)],
            "events": [e.as_dict() for e in db.events.list_events(job_id=job.id, limit=event_limit)],
            "chain": {"ancestors": [a.as_dict() for a in db.jobs.ancestors(job.id)],
                      "children": [c.as_dict() for c in db.jobs.children(job.id)]},
        }
