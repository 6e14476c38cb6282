"""Keys seen within a window: the memory behind webhook replay protection and the
``dedupe_key`` of routed events.

A key maps to the job its first sighting queued and stays live until ``expires_at``.
``claim`` looks the keys up, and when none is live runs ``make_job`` and remembers every key
for it, all in one write transaction, so two identical deliveries arriving at once queue
one job between them, never two. Expired rows are pruned on the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ductile.state.db import StateDB

FAILED = ("failed", "timed_out", "dead")


@dataclass(frozen=True)
class Claimed:
    job_id: str | None       # the job queued now, or the first one (None if it was pruned away)
    duplicate: bool
    key: str | None = None   # the live key that made it a duplicate


class SeenKeys:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def live(self, key: str, *, now: float | None = None) -> tuple[bool, str | None]:
        """(seen within its window, the job it queued)."""
        now = self.clock() if now is None else now
        with self.db.read() as conn:
            row = conn.execute("SELECT job_id FROM dedupe_keys WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        return (row is not None, None if row is None else row["job_id"])

    def claim(self, keys: Iterable[str], window: float, make_job: Callable[[], str | None], *,
              now: float | None = None, unless_failed: bool = False) -> Claimed:
        """The first live key's job (a duplicate), or ``make_job()`` with every key remembered
        for ``window`` seconds. ``make_job`` may return None (nothing queued): nothing is
        remembered then. ``unless_failed``: a key whose job ended failed, timed out or dead
        does not count (that job did not do the work; the next one may)."""
        keys = list(dict.fromkeys(keys))
        now = self.clock() if now is None else now
        with self.db.write() as conn:
            conn.execute("DELETE FROM dedupe_keys WHERE expires_at <= ?", (now,))
            for key in keys:
                row = conn.execute("SELECT job_id FROM dedupe_keys WHERE key = ?", (key,)).fetchone()
                if row is None:
                    continue
                if unless_failed and row["job_id"] is not None:
                    status = conn.execute("SELECT status FROM jobs WHERE id = ?", (row["job_id"],)).fetchone()
                    if status is not None and status[0] in FAILED:
                        continue
                return Claimed(row["job_id"], True, key)
            job_id = make_job()
            if job_id is not None and window > 0:
                conn.executemany("INSERT OR REPLACE INTO dedupe_keys (key, job_id, expires_at) VALUES (?, ?, ?)",
                                 [(key, job_id, now + window) for key in keys])
            return Claimed(job_id, False)

    def forget(self, key: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM dedupe_keys WHERE key = ?", (key,))
