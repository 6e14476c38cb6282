"""The scheduler thread: once a second, ask ``ticks.decide`` about every schedule and fire
what is due through ``ScheduleStore.fire`` (slot recorded and job enqueued in one
transaction). The arithmetic is in ``ticks``; the memory is in the state database, so a
restart neither repeats a slot nor forgets one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

from ductile.errors import DuctileError, StateError
from ductile.serve.authority import SCHEDULE, operator
from ductile.serve.health import Health
from ductile.serve.logs import log
from ductile.serve.periodic import Periodic
from ductile.serve.ticks import Schedule, decide
from ductile.state.db import StateDB

_log = logging.getLogger("ductile.scheduler")
TICK = 1.0
SCHEDULED = operator(SCHEDULE)  # the operator configured the schedule: full authority


class Scheduler:
    def __init__(self, db: StateDB, schedules: Sequence[Schedule], *, on_enqueue: Callable[[], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 health: Health | None = None) -> None:
        self.db = db
        self.health = health if health is not None else Health()
        self.schedules = list(schedules)
        self.on_enqueue = on_enqueue
        self.clock = clock
        self.rand = rand
        self._timer = Periodic("scheduler", TICK, self.tick, first_now=True)

    def start(self) -> None:
        if self.schedules:
            self._timer.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._timer.stop(timeout)

    def tick(self) -> int:
        """Fire every due schedule once; return how many jobs were enqueued."""
        fired = 0
        for s in self.schedules:
            if self._timer.stopping:
                break
            now = self.clock()
            try:
                action, slot = decide(s, self.db.schedules.last_slot(s.id), now)
                if action == "baseline":
                    self.db.schedules.baseline(s.id, s.plugin, s.command, slot)
                elif action == "fire":
                    not_before = now + self.rand() * s.jitter if s.jitter else None
                    job_id = self.db.schedules.fire(s.id, s.plugin, s.command, slot, payload=s.payload,
                                                    max_attempts=s.max_attempts, not_before=not_before,
                                                    authority=SCHEDULED.as_dict())
                    if job_id is not None:
                        fired += 1
                        log(_log, logging.INFO, f"schedule {s.where} fired", job_id=job_id, plugin=s.plugin,
                            command=s.command, slot=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot)))
            except DuctileError as err:  # the slot is not recorded, so the next tick tries it again
                cause = err.cause if isinstance(err, StateError) else err.kind
                self.health.report(_log, f"state:{cause}", f"schedule {s.where} could not fire: {err.message}",
                                   err.fix, plugin=s.plugin)
        if fired:
            self.on_enqueue()
        return fired
