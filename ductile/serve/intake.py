"""Group commit for jobs queued over HTTP: one writer thread takes every trigger that is
waiting and writes them in ONE transaction, then answers each.

Durability is unchanged: a trigger's ``202`` is sent only after the commit that holds its
row (``synchronous=FULL``). What changes is the cost under a burst: eight clients posting at
once cost one transaction and one fsync instead of eight, and the queue's write lock is
taken once instead of eight times between the workers' commits. A trigger that arrives
alone is written alone, at once: nothing waits for a batch to fill.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from ductile.errors import DuctileError
from ductile.serve.logs import log
from ductile.state.db import StateDB

_log = logging.getLogger("ductile.intake")
MAX_BATCH = 64


class Intake:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Future[str]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, plugin: str, command: str, payload: Any, **options: Any) -> Future[str]:
        """Queue one job (``options`` as ``JobQueue.enqueue`` takes them); the future holds
        its id once committed, or the error."""
        future: Future[str] = Future()
        self._queue.put(({"plugin": plugin, "command": command, "payload": payload, **options}, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[tuple[dict[str, Any], Future[str]]]) -> None:
        done: list[tuple[Future[str], str | DuctileError]] = []
        try:
            with self.db.write():
                for kwargs, future in batch:
                    try:
                        done.append((future, self.db.jobs.enqueue(**kwargs)))
                    except DuctileError as err:  # this job's own refusal; the others still go in
                        done.append((future, err))
        except DuctileError as err:  # the transaction itself failed: none of them was queued
            for _, future in batch:
                future.set_exception(err)
            return
        except Exception as err:  # noqa: BLE001 - never leave a client waiting for an answer
            log(_log, logging.ERROR, f"could not queue {len(batch)} job(s): {type(err).__name__}: {err}")
            for _, future in batch:
                future.set_exception(err)
            return
        for future, outcome in done:
            if isinstance(outcome, DuctileError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
