"""Retention: remove what the ledger no longer needs, by age, in small batches (#15).

What goes, and what never does:

    finished jobs     status succeeded | failed | timed_out | dead, finished before the jobs
                      cutoff; their attempts and transitions go with them (ON DELETE CASCADE).
                      Queued and running jobs are never pruned, however old.
    events            created before the events cutoff, unless a kept job was started by one
                      (its payload lives in the event row, migration 4)
    audit rows        vault audit rows older than the audit cutoff
    dedupe keys       past their own expiry (``service.dedupe_ttl`` for routed keys, a
                      webhook's ``replay_window`` for deliveries), whatever the retention says

Why batches: SQLite has one writer at a time. A single ``DELETE`` of a million rows would
hold the write lock for seconds, and every trigger, every worker's record and every
schedule would wait behind it. Each batch here is one short transaction of at most
``batch`` rows; between batches the pruner sleeps at least as long as the batch took (and
never less than ``PAUSE``), so other writers — in this process or another — find the lock
free most of the time. Candidates are walked along an index in (time, rowid) order with a
cursor, so rows that must stay (an old event a kept job needs, an old job still queued)
are stepped over once, not re-read by every batch.

``count`` answers the dry run with the same predicates; ``prune`` does it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ductile.state.db import StateDB

BATCH = 500          # rows per transaction
PAUSE = 0.05         # seconds between batches, at least (see the module doc)
FINISHED = ("succeeded", "failed", "timed_out", "dead")
_FINISHED_SQL = ", ".join(f"'{s}'" for s in FINISHED)


@dataclass(frozen=True)
class Cutoffs:
    """Epoch seconds: rows older than these go. None keeps that kind of row for good."""

    jobs: float | None
    events: float | None
    audit: float | None
    now: float  # dedupe keys expire against this


def cutoffs(jobs: float | None, events: float | None, audit: float | None, now: float) -> Cutoffs:
    """Cutoffs from retention ages in seconds (``state.retention``); None: keep for good."""
    return Cutoffs(None if jobs is None else now - jobs, None if events is None else now - events,
                   None if audit is None else now - audit, now)


@dataclass
class Pruned:
    jobs: int = 0
    events: int = 0
    audit: int = 0
    dedupe_keys: int = 0
    batches: int = 0

    @property
    def total(self) -> int:
        return self.jobs + self.events + self.audit + self.dedupe_keys

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# (kind, the candidate walk, the delete of one batch's candidates)
_JOBS_WALK = (f"SELECT rowid, created_at FROM jobs INDEXED BY jobs_created WHERE created_at < ?"
              " AND (created_at > ? OR (created_at = ? AND rowid > ?)) ORDER BY created_at, rowid LIMIT ?")
_JOBS_KEEP = f"status IN ({_FINISHED_SQL}) AND finished_at < ?"
_EVENTS_WALK = ("SELECT rowid, created_at FROM events INDEXED BY events_created WHERE created_at < ?"
                " AND (created_at > ? OR (created_at = ? AND rowid > ?)) ORDER BY created_at, rowid LIMIT ?")
_EVENTS_KEEP = "NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event_id = events.id)"


class Retention:
    def __init__(self, db: StateDB, *, batch: int = BATCH, pause: float = PAUSE,
                 sleep: Callable[[float], None] = time.sleep, stopping: Callable[[], bool] = lambda: False) -> None:
        self.db = db
        self.batch = max(1, batch)
        self.pause = pause
        self.sleep = sleep
        self.stopping = stopping  # serve's drain: stop between batches, the rest waits for the next round

    # -- the dry run -------------------------------------------------------------------

    def count(self, cut: Cutoffs) -> Pruned:
        """What ``prune`` would remove now (one read snapshot)."""
        out = Pruned()
        with self.db.read() as conn:
            if cut.jobs is not None:
                out.jobs = int(conn.execute(f"SELECT count(*) FROM jobs INDEXED BY jobs_created WHERE created_at < ?"
                                            f" AND {_JOBS_KEEP}", (cut.jobs, cut.jobs)).fetchone()[0])
            if cut.events is not None:
                # an event goes when no job that stays refers to it
                stays, args = "", [cut.events]
                if cut.jobs is not None:
                    stays = f" AND NOT (j.created_at < ? AND j.status IN ({_FINISHED_SQL}) AND j.finished_at < ?)"
                    args += [cut.jobs, cut.jobs]
                out.events = int(conn.execute(
                    "SELECT count(*) FROM events INDEXED BY events_created WHERE created_at < ? AND NOT EXISTS"
                    f" (SELECT 1 FROM jobs j WHERE j.event_id = events.id{stays})", args).fetchone()[0])
            if cut.audit is not None:
                out.audit = int(conn.execute("SELECT count(*) FROM vault_audit INDEXED BY vault_audit_at WHERE at < ?",
                                             (cut.audit,)).fetchone()[0])
            out.dedupe_keys = int(conn.execute("SELECT count(*) FROM dedupe_keys WHERE expires_at <= ?",
                                               (cut.now,)).fetchone()[0])
        return out

    # -- the prune ---------------------------------------------------------------------

    def prune(self, cut: Cutoffs, *, progress: Callable[[Pruned], None] | None = None) -> Pruned:
        """Remove in batches; jobs first (so events they held become free), then events,
        audit rows and expired dedupe keys. Returns what was removed."""
        out = Pruned()
        if cut.jobs is not None:
            out.jobs = self._walk("jobs", _JOBS_WALK, _JOBS_KEEP, (cut.jobs,), cut.jobs, out, progress)
        if cut.events is not None:
            out.events = self._walk("events", _EVENTS_WALK, _EVENTS_KEEP, (), cut.events, out, progress)
        if cut.audit is not None:
            out.audit = self._simple("DELETE FROM vault_audit WHERE id IN (SELECT id FROM vault_audit INDEXED BY"
                                     " vault_audit_at WHERE at < ? ORDER BY at LIMIT ?)", cut.audit, out, progress)
        out.dedupe_keys = self._simple("DELETE FROM dedupe_keys WHERE rowid IN (SELECT rowid FROM dedupe_keys WHERE"
                                       " expires_at <= ? LIMIT ?)", cut.now, out, progress)
        return out

    def _rest(self, took: float) -> None:
        self.sleep(max(self.pause, took))

    def _walk(self, table: str, walk: str, keep: str, keep_args: tuple[Any, ...], cutoff: float, out: Pruned,
              progress: Callable[[Pruned], None] | None) -> int:
        removed = 0
        cursor: tuple[float, int] = (float("-inf"), -1)
        while not self.stopping():
            started = time.monotonic()
            with self.db.write() as conn:
                rows = conn.execute(walk, (cutoff, cursor[0], cursor[0], cursor[1], self.batch)).fetchall()
                if not rows:
                    break
                ids = [r[0] for r in rows]
                marks = ",".join("?" * len(ids))
                n = conn.execute(f"DELETE FROM {table} WHERE rowid IN ({marks}) AND {keep}", (*ids, *keep_args)).rowcount
            cursor = (float(rows[-1][1]), int(rows[-1][0]))
            removed += n
            out.batches += 1
            setattr(out, table, removed)
            if progress is not None:
                progress(out)
            if len(rows) < self.batch:
                break
            self._rest(time.monotonic() - started)
        return removed

    def _simple(self, delete: str, cutoff: float, out: Pruned, progress: Callable[[Pruned], None] | None) -> int:
        removed = 0
        while not self.stopping():
            started = time.monotonic()
            with self.db.write() as conn:
                n = conn.execute(delete, (cutoff, self.batch)).rowcount
            removed += n
            out.batches += 1
            if progress is not None:
                progress(out)
            if n < self.batch:
                break
            self._rest(time.monotonic() - started)
        return removed
