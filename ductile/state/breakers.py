"""The circuit breaker of a plugin's scheduled runs (#15): the pure transitions and the
``breakers`` table that remembers them across restarts.

A plugin whose scheduled poll fails every minute should not be run every minute: after
``breaker.threshold`` consecutive failed scheduled runs its schedules pause for
``breaker.reset_after``, then one run is let through (half-open) and its outcome decides.

    state      what happens                          next
    closed     a scheduled run succeeds              closed, failures 0
    closed     one fails, failures+1 < threshold     closed, failures+1
    closed     one fails, failures+1 >= threshold    open until now + reset_after
    open       a slot comes before retry_at          the slot is skipped
    open       a slot comes at or after retry_at     it runs: the half-open try -> half_open
    half_open  a slot comes (the try still runs)     the slot is skipped
    half_open  the try (or any scheduled run) ok     closed, failures 0
    half_open  it fails                              open until now + reset_after
    any        ``ductile system breaker P --reset``  closed, failures 0
    any        threshold 0                           never opens

Only runs the scheduler started count (trigger ``schedule``), each finished run once
(a retried job counts each attempt). Triggers over the API and webhooks are never
blocked: an operator can still run the plugin by hand while its breaker is open.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ductile.state.codec import iso
from ductile.state.db import StateDB

ERROR_MAX = 500
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class Breaker:
    plugin: str
    state: str = CLOSED
    failures: int = 0
    opened_at: float | None = None
    retry_at: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "state": self.state, "failures": self.failures,
                "opened_at": iso(self.opened_at), "retry_at": iso(self.retry_at), "last_error": self.last_error}


def gate(b: Breaker | None, now: float) -> tuple[str | None, bool]:
    """(why scheduled runs are blocked or None, whether the next run is the half-open try)."""
    if b is None or b.state == CLOSED:
        return None, False
    if b.state == OPEN and b.retry_at is not None and now >= b.retry_at:
        return None, True
    if b.state == OPEN:
        return f"breaker open after {b.failures} failed scheduled run(s) until {iso(b.retry_at)}", False
    return "breaker half-open: its one try is still running", False


def trying(b: Breaker) -> Breaker:
    """The half-open try was queued."""
    return replace(b, state=HALF_OPEN)


def after_run(b: Breaker | None, plugin: str, *, ok: bool, error: str | None, threshold: int, reset_after: float,
              now: float) -> Breaker:
    """The breaker after one scheduled run of ``plugin`` finished."""
    b = b if b is not None else Breaker(plugin)
    if ok or threshold <= 0:
        return Breaker(plugin)
    failures = b.failures + 1
    text = error[:ERROR_MAX] if error else None
    if b.state == HALF_OPEN or failures >= threshold:
        return Breaker(plugin, OPEN, failures, now, now + reset_after, text)
    return replace(b, failures=failures, last_error=text)


def opened(before: Breaker | None, after: Breaker) -> bool:
    return after.state == OPEN and (before is None or before.state != OPEN or before.retry_at != after.retry_at)

# -- the table ------------------------------------------------------------------------


def _row(r: sqlite3.Row) -> Breaker:
    return Breaker(r["plugin"], r["state"], int(r["failures"]), r["opened_at"], r["retry_at"], r["last_error"])


class BreakerStore:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def all(self) -> dict[str, Breaker]:
        with self.db.read() as conn:
            return {r["plugin"]: _row(r) for r in conn.execute("SELECT * FROM breakers ORDER BY plugin")}

    def get(self, plugin: str) -> Breaker | None:
        with self.db.read() as conn:
            r = conn.execute("SELECT * FROM breakers WHERE plugin = ?", (plugin,)).fetchone()
        return None if r is None else _row(r)

    def put(self, b: Breaker) -> None:
        """Store ``b`` (joins the caller's write block, e.g. the one recording the run)."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO breakers (plugin, state, failures, opened_at, retry_at, last_error, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (plugin) DO UPDATE SET state = excluded.state,"
                         " failures = excluded.failures, opened_at = excluded.opened_at, retry_at = excluded.retry_at,"
                         " last_error = excluded.last_error, updated_at = excluded.updated_at",
                         (b.plugin, b.state, b.failures, b.opened_at, b.retry_at, b.last_error, self.clock()))

    def reset(self, plugin: str | None = None) -> list[str]:
        """Close the breaker of ``plugin`` (every one when None); the plugins that were not closed."""
        with self.db.write() as conn:
            where, args = ("WHERE plugin = ?", (plugin,)) if plugin else ("", ())
            was_open = [r[0] for r in conn.execute(f"SELECT plugin, state FROM breakers {where}", args)
                        if r[1] != "closed"]
            conn.execute(f"UPDATE breakers SET state = 'closed', failures = 0, opened_at = NULL, retry_at = NULL,"
                         f" updated_at = ? {where}", (self.clock(), *args))
            return was_open
