"""Upkeep the running gateway does on a timer, off the request and job paths.

* **Orphans of ``plugin run``**: a job it holds whose process is gone (killed mid-run) is
  settled, so its plugin's concurrency cap is free again without a restart.
* **WAL checkpoint (TRUNCATE)** every ``CHECKPOINT_EVERY``: SQLite's automatic checkpoints
  copy the WAL back but never shrink the file, so one burst of large rows (a runaway
  plugin state, a big event) would otherwise leave a WAL of that size on disk for good.
  ``journal_size_limit`` (``state.db``) bounds it between these rounds.

* **Retention** (``state.retention``, ``ductile.state.retention``): finished jobs, events
  and audit rows past their age, and dedupe keys past their expiry, removed in small
  batches on a thread of its own, the first round a minute after boot (sooner when
  ``state.retention.every`` is shorter) and then every ``state.retention.every``. A drain stops it between two batches.

A failed round is reported through ``health`` like any other database fault and tried
again at the next tick; it never stops the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ductile.config.model import RetentionConfig
from ductile.errors import DuctileError, StateError
from ductile.serve.health import Health
from ductile.serve.logs import log
from ductile.serve.periodic import Periodic
from ductile.state.db import StateDB
from ductile.state.owner import is_alive
from ductile.state.retention import Pruned, Retention, cutoffs

_log = logging.getLogger("ductile.maintenance")
CHECKPOINT_EVERY = 60.0
FIRST_PRUNE_AFTER = 60.0  # seconds after boot: a gateway restarted often still prunes


class Maintenance:
    def __init__(self, db: StateDB, health: Health, *, every: float = CHECKPOINT_EVERY,
                 extra: tuple[Callable[[], None], ...] = (),
                 retention: Callable[[], RetentionConfig] | None = None,
                 clock: Callable[[], float] = time.time,
                 on_dead: Callable[[list[str]], None] | None = None) -> None:
        self.db = db
        self.health = health
        self.extra = extra
        self.retention = retention  # the running config's, read each round (a reload changes it)
        self.clock = clock
        self.on_dead = on_dead  # orphans settled dead get their job.dead event (the gateway's hook)
        self._timer = Periodic("maintenance", every, self.run_once, first_now=False)
        self._pruner = Periodic("retention", 1.0, self.prune_if_due, first_now=False)
        self._next_prune = clock() + min(FIRST_PRUNE_AFTER, retention().every if retention is not None else 0.0)
        self.last_pruned: Pruned | None = None

    def start(self) -> None:
        self._timer.start()
        if self.retention is not None:
            self._pruner.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._pruner.stop(timeout)  # between two batches: each is a short transaction
        self._timer.stop(timeout)

    def prune_if_due(self) -> Pruned | None:
        """One retention round when ``state.retention.every`` has passed since the last one."""
        if self.retention is None:
            return None
        policy = self.retention()
        now = self.clock()
        self._next_prune = min(self._next_prune, now + policy.every)  # a reload that shortens it counts now
        if now < self._next_prune:
            return None
        self._next_prune = now + policy.every
        try:
            pruned = Retention(self.db, stopping=lambda: self._pruner.stopping).prune(
                cutoffs(policy.jobs, policy.events, policy.audit, now))
        except DuctileError as err:
            cause = err.cause if isinstance(err, StateError) else err.kind
            self.health.report(_log, f"state:{cause}", f"retention: {err.message}", err.fix)
            return None
        self.last_pruned = pruned
        if pruned.total:
            log(_log, logging.INFO, f"retention: pruned {pruned.jobs} job(s), {pruned.events} event(s), "
                f"{pruned.audit} audit row(s), {pruned.dedupe_keys} expired dedupe key(s) in {pruned.batches} "
                "batch(es)", **pruned.as_dict())
        return pruned

    def run_once(self) -> None:
        """One round: every task, each on its own (one failing does not skip the others)."""
        for task in (self._orphans, self._checkpoint, *self.extra):
            try:
                task()
            except DuctileError as err:
                cause = err.cause if isinstance(err, StateError) else err.kind
                self.health.report(_log, f"state:{cause}", f"maintenance: {err.message}", err.fix)

    def _checkpoint(self) -> None:
        self.db.checkpoint()

    def _orphans(self) -> None:
        settled = self.db.jobs.recover_orphans(is_alive)
        for job_id, status in settled:
            log(_log, logging.WARNING, f"job {job_id} was held by a process that is gone; now {status}",
                job_id=job_id, status=status)
        dead = [job_id for job_id, status in settled if status == "dead"]
        if dead and self.on_dead is not None:
            self.on_dead(dead)
