"""Upkeep the running gateway does on a timer, off the request and job paths.

* **Orphans of ``plugin run``**: a job it holds whose process is gone (killed mid-run) is
  settled, so its plugin's concurrency cap is free again without a restart.
* **WAL checkpoint (TRUNCATE)** every ``CHECKPOINT_EVERY``: SQLite's automatic checkpoints
  copy the WAL back but never shrink the file, so one burst of large rows (a runaway
  plugin state, a big event) would otherwise leave a WAL of that size on disk for good.
  ``journal_size_limit`` (``state.db``) bounds it between these rounds.

A failed round is reported through ``health`` like any other database fault and tried
again at the next tick; it never stops the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ductile.errors import DuctileError, StateError
from ductile.serve.health import Health
from ductile.serve.logs import log
from ductile.serve.periodic import Periodic
from ductile.state.db import StateDB
from ductile.state.owner import is_alive

_log = logging.getLogger("ductile.maintenance")
CHECKPOINT_EVERY = 60.0


class Maintenance:
    def __init__(self, db: StateDB, health: Health, *, every: float = CHECKPOINT_EVERY,
                 extra: tuple[Callable[[], None], ...] = ()) -> None:
        self.db = db
        self.health = health
        self.extra = extra
        self._timer = Periodic("maintenance", every, self.run_once, first_now=False)

    def start(self) -> None:
        self._timer.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._timer.stop(timeout)

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
        for job_id, status in self.db.jobs.recover_orphans(is_alive):
            log(_log, logging.WARNING, f"job {job_id} was held by a process that is gone; now {status}",
                job_id=job_id, status=status)
