"""When each schedule last fired: the scheduler's memory across restarts.

A slot is the scheduled instant a tick stands for (``every: 5m`` -> multiples of 300 s,
``cron`` -> each matching minute). ``fire`` records a slot and enqueues its job in one
transaction, and refuses a slot that is not newer than the last one recorded, so two
ticks of one slot (a fast loop, a restart, a second process) never enqueue twice; the
job's ``dedupe_key`` is a second lock on the same door.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ductile.state.db import StateDB


def dedupe_key(schedule_id: str, slot: float) -> str:
    return f"schedule:{schedule_id}:{slot:.3f}"


class ScheduleStore:
    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def last_slot(self, schedule_id: str) -> float | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT last_slot FROM schedule_state WHERE id = ?", (schedule_id,)).fetchone()
        return None if row is None else float(row[0])

    def memory(self, schedule_id: str) -> tuple[float | None, float | None, str | None, str | None]:
        """(last slot, when first seen, the last job it queued, that job's status now)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT s.last_slot, coalesce(s.created_at, s.updated_at) AS created_at, s.last_job_id,"
                               " j.status FROM schedule_state s LEFT JOIN jobs j ON j.id = s.last_job_id"
                               " WHERE s.id = ?", (schedule_id,)).fetchone()
        if row is None:
            return None, None, None, None
        return float(row[0]), row[1], row[2], row[3]

    def baseline(self, schedule_id: str, plugin: str, command: str, slot: float) -> None:
        """Remember ``slot`` as seen without running it (a cron schedule seen for the first time)."""
        now = self.clock()
        with self.db.write() as conn:
            conn.execute("INSERT INTO schedule_state (id, plugin, command, last_slot, updated_at, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                         (schedule_id, plugin, command, slot, now, now))

    def skip(self, schedule_id: str, plugin: str, command: str, slot: float) -> bool:
        """Record ``slot`` as seen without running it (a policy skipped it); False when that
        slot or a later one was already recorded."""
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute("SELECT last_slot FROM schedule_state WHERE id = ?", (schedule_id,)).fetchone()
            if row is not None and float(row[0]) >= slot:
                return False
            conn.execute("INSERT INTO schedule_state (id, plugin, command, last_slot, updated_at, created_at)"
                         " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET last_slot = excluded.last_slot,"
                         " updated_at = excluded.updated_at", (schedule_id, plugin, command, slot, now, now))
            return True

    def fire(self, schedule_id: str, plugin: str, command: str, slot: float, *, payload: Any,
             max_attempts: int, not_before: float | None = None,
             authority: dict[str, Any] | None = None) -> str | None:
        """Enqueue the job for ``slot`` and record it, or return None if that slot (or a later
        one) already fired. The job's trigger is ``schedule``; ``authority`` is what its
        chain may do (the operator's, who configured the schedule)."""
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute("SELECT last_slot FROM schedule_state WHERE id = ?", (schedule_id,)).fetchone()
            if row is not None and float(row[0]) >= slot:
                return None
            job_id = self.db.jobs.enqueue(plugin, command, payload, max_attempts=max_attempts,
                                          dedupe_key=dedupe_key(schedule_id, slot), not_before=not_before, now=now,
                                          trigger="schedule", authority=authority)
            conn.execute("INSERT INTO schedule_state (id, plugin, command, last_slot, last_job_id, updated_at,"
                         " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                         " last_slot = excluded.last_slot, last_job_id = excluded.last_job_id,"
                         " updated_at = excluded.updated_at", (schedule_id, plugin, command, slot, job_id, now, now))
            return job_id
