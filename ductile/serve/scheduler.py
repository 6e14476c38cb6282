"""The scheduler thread: once a second, ask ``ticks.plan`` about every schedule and carry
out its answer — fire (slot recorded and job enqueued in one transaction), skip (slot
recorded, nothing queued), or remember a first sighting. The arithmetic and the policies
are in ``ticks``; the breaker's rules in ``state.breakers``; the memory is in the state
database, so a restart neither repeats a slot nor forgets one.

What this edge adds: it reads the facts ``plan`` takes (the schedule's memory, whether
its previous job is still queued or running, the plugin's breaker), cancels a previous
job for ``if_running: cancel`` (a queued one is settled ``failed`` at once, a running
one is killed through the dispatcher), and marks the breaker half-open in the same
transaction as the one run it lets through. A reload hands it new schedules
(``replace``); a tick in progress finishes with the ones it started with.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from ductile.config.model import Config
from ductile.errors import DuctileError, StateError
from ductile.serve.authority import SCHEDULE, operator
from ductile.serve.health import Health
from ductile.serve.logs import log
from ductile.serve.periodic import Periodic
from ductile.serve.record import SUPERSEDED
from ductile.serve.ticks import Memory, Schedule, plan
from ductile.state.breakers import Breaker, gate, trying
from ductile.state.db import StateDB

_log = logging.getLogger("ductile.scheduler")
TICK = 1.0
SCHEDULED = operator(SCHEDULE)  # the operator configured the schedule: full authority


def _utc(slot: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))


class Scheduler:
    def __init__(self, db: StateDB, schedules: Sequence[Schedule], *, on_enqueue: Callable[[], None],
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 health: Health | None = None, config: Config | None = None,
                 supersede: Callable[[str, str], bool] = lambda _job, _why: False) -> None:
        self.db = db
        self.health = health if health is not None else Health()
        self.schedules = list(schedules)
        self.config = config
        self.on_enqueue = on_enqueue
        self.clock = clock
        self.rand = rand
        self.supersede = supersede  # kills a running job (the dispatcher's); False when it runs elsewhere
        self._timer = Periodic("scheduler", TICK, self.tick, first_now=True)
        self._swap = threading.Lock()
        self._skipping: dict[str, str] = {}  # schedule id -> reason last logged (one line per change)

    def start(self) -> None:
        self._timer.start()  # always: a reload may add the first schedule

    def stop(self, timeout: float = 5.0) -> None:
        self._timer.stop(timeout)

    def replace(self, schedules: Sequence[Schedule], config: Config) -> None:
        """Use ``schedules`` from the next tick on (a reload). A schedule whose definition is
        unchanged keeps its id, and so its memory."""
        with self._swap:
            self.schedules, self.config = list(schedules), config

    def _threshold(self, plugin: str) -> int:
        pc = self.config.plugins.get(plugin) if self.config is not None else None
        return pc.breaker.threshold if pc is not None else 3

    def tick(self) -> int:
        """Carry out every schedule's decision once; return how many jobs were enqueued."""
        with self._swap:
            schedules = list(self.schedules)
        fired = 0
        try:
            breakers = self.db.breakers.all()
        except DuctileError as err:
            self._fault(err, "the breakers could not be read", None)
            return 0
        for s in schedules:
            if self._timer.stopping:
                break
            try:
                fired += self._one(s, breakers)
            except DuctileError as err:  # the slot is not recorded, so the next tick tries it again
                self._fault(err, f"schedule {s.where} could not fire", s.plugin)
        if fired:
            self.on_enqueue()
        return fired

    def _fault(self, err: DuctileError, what: str, plugin: str | None) -> None:
        cause = err.cause if isinstance(err, StateError) else err.kind
        self.health.report(_log, f"state:{cause}", f"{what}: {err.message}", err.fix, plugin=plugin)

    def _one(self, s: Schedule, breakers: dict[str, Breaker]) -> int:
        now = self.clock()
        last, created, last_job, last_status = self.db.schedules.memory(s.id)
        memory = None if last is None else Memory(last, created)
        breaker = breakers.get(s.plugin) if self._threshold(s.plugin) > 0 else None
        blocked, half_open_try = gate(breaker, now)
        decision = plan(s, memory, now, outstanding=last_status in ("queued", "running"), blocked=blocked)
        if decision.action == "baseline":
            self.db.schedules.baseline(s.id, s.plugin, s.command, decision.slots[0])
            return 0
        if decision.action == "skip":
            if self.db.schedules.skip(s.id, s.plugin, s.command, decision.slots[0]):
                self._said_skip(s, decision.slots[0], decision.reason)
            return 0
        if decision.action != "fire":
            return 0
        self._skipping.pop(s.id, None)
        if decision.cancel_previous and last_job is not None:
            self._cancel(s, last_job)
        fired = 0
        with self.db.write():
            for slot in decision.slots:
                not_before = now + self.rand() * s.jitter if s.jitter else None
                job_id = self.db.schedules.fire(s.id, s.plugin, s.command, slot, payload=s.payload,
                                                max_attempts=s.max_attempts, not_before=not_before,
                                                authority=SCHEDULED.as_dict())
                if job_id is None:
                    continue
                fired += 1
                log(_log, logging.INFO, f"schedule {s.where} fired" + (" (the breaker's half-open try)"
                                                                       if half_open_try else ""),
                    job_id=job_id, plugin=s.plugin, command=s.command, slot=_utc(slot))
            if fired and half_open_try and breaker is not None:
                breakers[s.plugin] = trying(breaker)
                self.db.breakers.put(breakers[s.plugin])
        return fired

    def _cancel(self, s: Schedule, job_id: str) -> None:
        why = f"superseded by the next run of schedule {s.where} (if_running: cancel)"
        if self.db.jobs.cancel_queued(job_id, f"cancelled: {why}", SUPERSEDED) or self.supersede(job_id, why):
            log(_log, logging.INFO, f"schedule {s.where}: cancelled its previous job {job_id} (if_running: cancel)",
                job_id=job_id, plugin=s.plugin)

    def _said_skip(self, s: Schedule, slot: float, reason: str) -> None:
        """One log line when a schedule starts skipping for a reason, not one per slot."""
        key = reason.split(" until ")[0].split(" is outside ")[-1]
        if self._skipping.get(s.id) == key:
            return
        self._skipping[s.id] = key
        log(_log, logging.INFO, f"schedule {s.where} skipped the run at {_utc(slot)}: {reason}", plugin=s.plugin,
            command=s.command, slot=_utc(slot), why=reason)
