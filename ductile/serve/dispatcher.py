"""The dispatcher: ``service.max_workers`` threads, each claiming a due job from the durable
queue and running it through the one Executor, then recording the outcome.

Why threads and a database queue rather than an in-memory one: the queue *is* the
record. A job accepted with 202 is a row before the API answers; a worker takes it with
``claim_next`` (one transaction, so two workers never share a job), runs it, and settles
it with one more transaction. Nothing lives only in memory, so a crash loses nothing the
next boot cannot recover.

Per-plugin concurrency: ``plugins.<n>.parallelism: N`` (upstream's key) caps that plugin
at N running jobs; without it a plugin whose manifest says ``concurrency_safe: false`` runs
one job at a time (an explicit parallelism overrides that, as upstream does, and doctor
warns). ``claim_next`` skips a plugin at its cap and younger jobs of other plugins go ahead.

Shutdown: ``stop_claiming`` ends intake; ``cancel_running`` sets each running job's cancel
event, which the executor's spawn edge turns into a kill of the plugin's process group
(the drop-aware kill path); the worker then re-queues the job without charging the attempt.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ductile.config.model import RetryConfig
from ductile.errors import DuctileError
from ductile.runtime.boot import Runtime
from ductile.runtime.executor import EventSink, Executor, Job, JobResult
from ductile.serve.logs import log
from ductile.serve.record import identity, record_run
from ductile.serve.settle import settle
from ductile.state.db import StateDB
from ductile.state.jobs import Job as QueuedJob

_log = logging.getLogger("ductile.dispatch")
_plugin_log = logging.getLogger("ductile.plugin")
IDLE_POLL = 0.5  # seconds a worker waits for work before looking again (retries fall due)
PLUGIN_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
                 "error": logging.ERROR}

ExecutorFactory = Callable[[EventSink], Executor]


def parallelism(configured: int | None, concurrency_safe: bool) -> int | None:
    """How many jobs of a plugin may run at once (None: no cap of its own).

        parallelism set    concurrency_safe    cap
        N                  any                 N     (the operator decided)
        -                  false               1
        -                  true                none (service.max_workers bounds everything)
    """
    if configured is not None:
        return configured
    return None if concurrency_safe else 1


class Dispatcher:
    def __init__(self, db: StateDB, runtime: Runtime, make_executor: ExecutorFactory, *,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random) -> None:
        self.db = db
        self.runtime = runtime
        self.config = runtime.config
        self.clock = clock
        self.rand = rand
        self.executor = make_executor(self._collect_event)
        self._tls = threading.local()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancelling = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self.finished = 0
        self.requeued = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.service.max_workers):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self, n: int = 1) -> None:
        """Tell ``n`` idle workers new work is queued (the API and scheduler call this). One
        job wakes one worker: waking all of them would only make them race for the write lock."""
        with self._wake:
            self._wake.notify(n)

    def stop_claiming(self) -> None:
        self._stop.set()
        self.wake(len(self._threads))

    def running(self) -> int:
        with self._lock:
            return len(self._live)

    def cancel_running(self) -> list[str]:
        """Kill every running job through the executor; their workers re-queue them."""
        with self._lock:
            self._cancelling.set()
            live = list(self._live.items())
        for _, event in live:
            event.set()
        return [job_id for job_id, _ in live]

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- one worker --------------------------------------------------------------------

    def _limit(self, plugin: str) -> int | None:
        found = self.runtime.plugins.get(plugin)
        pc = self.config.plugins.get(plugin)
        return parallelism(pc.parallelism if pc is not None else None,
                           found.manifest.concurrency_safe if found is not None else True)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.db.jobs.claim_next(self.clock(), running_limits=self._limit)
            except DuctileError as err:
                log(_log, logging.ERROR, f"cannot claim a job: {err.one_line()}")
                job = None
            if job is None:
                with self._wake:
                    if not self._stop.is_set():
                        self._wake.wait(IDLE_POLL)
                continue
            cancel = threading.Event()
            with self._lock:
                self._live[job.id] = cancel
                if self._cancelling.is_set():  # claimed in the instant the deadline passed
                    cancel.set()
            try:
                self._run(job, cancel)
            except Exception as err:  # noqa: BLE001 - a worker must survive anything one job does
                log(_log, logging.ERROR, f"job {job.id} could not be recorded: {type(err).__name__}: {err}; "
                    "it stays running and is recovered at the next boot", job_id=job.id, plugin=job.plugin)
            finally:
                with self._lock:
                    self._live.pop(job.id, None)

    def _command_type(self, plugin: str, command: str) -> str | None:
        """read | write from the plugin's manifest; None when unknown (counted as a write)."""
        found = self.runtime.plugins.get(plugin)
        spec = found.manifest.command(command) if found is not None else None
        return spec.type if spec is not None else None

    def _state_mode(self, plugin: str, command: str) -> str:
        found = self.runtime.plugins.get(plugin)
        return found.manifest.state_mode(command) if found is not None else "merge"

    def _collect_event(self, type: str, payload: dict[str, Any]) -> None:
        """Executor events (``plugin.drop_failed``...) are kept with the job and stored in
        its settling transaction."""
        buf = getattr(self._tls, "events", None)
        if buf is not None:
            buf.append((type, payload))
        else:
            self.db.events.record_event(type, payload, plugin=payload.get("plugin"))

    def _run(self, queued: QueuedJob, cancel: threading.Event) -> None:
        state = self.db.plugin_state.get_state(queued.plugin)
        context = {"attempt": queued.attempt, "max_attempts": queued.max_attempts, "event_depth": queued.event_depth,
                   "parent_job_id": queued.parent_job_id, "dedupe_key": queued.dedupe_key}
        self._tls.events = []
        try:
            result = self.executor.run(Job(plugin=queued.plugin, command=queued.command,
                                           payload=queued.payload if isinstance(queued.payload, dict) else {},
                                           job_id=queued.id, event=queued.event, context=context, state=state),
                                       cancel=cancel)
            gateway_events = list(self._tls.events)
        finally:
            self._tls.events = None
        pc = self.config.plugins.get(queued.plugin)
        decision = settle(result.outcome, attempt=queued.attempt, max_attempts=queued.max_attempts,
                          retry=pc.retry if pc is not None else RetryConfig(), now=self.clock(), rand=self.rand())
        if decision is None:
            self.db.jobs.requeue_running(queued.id, "shutdown: killed at the drain deadline, re-queued")
            self.requeued += 1
            log(_log, logging.WARNING, f"job {queued.id} killed at the shutdown deadline and re-queued",
                job_id=queued.id, plugin=queued.plugin, command=queued.command)
            return
        rec = record_run(self.db, self.config, queued, result, decision, gateway_events,
                         command_type=self._command_type, state_mode=self._state_mode)
        self.finished += 1
        self._report(queued, result, rec.status, rec.downstream, rec.warnings)
        if rec.downstream:
            self.wake(len(rec.downstream))

    def _report(self, queued: QueuedJob, result: JobResult, status: str, downstream: list[str],
                warnings: list[str] | None = None) -> None:
        out = result.outcome
        fields: dict[str, Any] = {"job_id": queued.id, "plugin": queued.plugin, "command": queued.command,
                                  "status": status, "attempt": f"{queued.attempt}/{queued.max_attempts}"}
        account, uid = identity(result)
        if account is not None:
            fields["account"], fields["uid"] = account, uid
        if downstream:
            fields["downstream"] = len(downstream)
        level = logging.INFO if status in ("succeeded", "queued") else logging.WARNING
        msg = f"job {queued.plugin}/{queued.command} {status}"
        if out.error is not None:
            fields["error"] = out.reason
            msg += f": {out.reason}"
        log(_log, level, msg, **fields)
        for warning in warnings or ():
            log(_log, logging.WARNING, f"job {queued.plugin}/{queued.command}: {warning}", job_id=queued.id,
                plugin=queued.plugin)
        if out.response is not None:
            for entry in out.response.logs:
                log(_plugin_log, PLUGIN_LEVELS.get(entry.level.lower(), logging.INFO), f"{queued.plugin}: {entry.message}",
                    job_id=queued.id, plugin=queued.plugin)
