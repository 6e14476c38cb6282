"""The dispatcher: ``service.max_workers`` threads, each claiming a due job from the durable
queue and running it through the one Executor, then recording the outcome.

Why threads and a database queue rather than an in-memory one: the queue *is* the
record. A job accepted with 202 is a row before the API answers; a worker takes it with
``claim`` (one transaction, so two workers never share a job), runs it, and settles
it with one more transaction — the one that also claims the worker's next job. Nothing
lives only in memory, so a crash loses nothing the next boot cannot recover.

Per-plugin concurrency (``runtime.concurrency``, shared with ``plugin run``):
``plugins.<n>.parallelism: N`` (upstream's key) caps that plugin at N running jobs; without
it a plugin whose manifest says ``concurrency_safe: false`` runs one job at a time (an
explicit parallelism overrides that, as upstream does, and doctor warns). ``claim`` skips a
plugin at its cap and younger jobs of other plugins go ahead.

Idle workers sleep: until they are woken (a trigger, a schedule, a capped plugin's job
finishing) or until the earliest queued job falls due (``Claim.next_due``), never in a
polling loop. A wake-up that arrives while a worker is busy is kept as a ticket, so it is
not lost in the instant between a claim that found nothing and the wait.

Settle until recorded: a finished job's outcome stays with its worker until the database
accepts it. A transient fault (disk full, read-only mount, a held lock) is retried with
backoff and shown as ``degraded`` (``health``); the worker takes no new job meanwhile. Only
the shutdown deadline makes it give up, and then the job stays ``running`` and is
recovered at the next boot. A gateway fault before the spawn (``GatewayFault``) defers the
job without charging its attempt.

Shutdown: ``stop_claiming`` ends intake; ``cancel_running`` sets each running job's cancel
event, which the executor's spawn edge turns into a kill of the plugin's process group
(the drop-aware kill path); the worker then re-queues the job without charging the attempt.
``supersede`` kills one job the same way for a schedule's ``if_running: cancel``; that job
is recorded ``failed`` (reason ``superseded``), not re-queued.

Reload: ``use(runtime)`` swaps the runtime and builds its executor; a worker reads the
current pair once when it starts a job, so a job that is running when the gateway reloads
finishes (and is recorded) on the runtime it started with.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ductile.config.model import Config, RetryConfig
from ductile.errors import DuctileError, GatewayFault, StateError
from ductile.runtime.boot import Runtime
from ductile.runtime.concurrency import concurrency_limit
from ductile.runtime.executor import EventSink, Executor, Job, JobResult
from ductile.runtime.outcome import Outcome
from ductile.serve.health import Health
from ductile.serve.logs import log
from ductile.serve.record import SUPERSEDED, Recorded, identity, record_run
from ductile.serve.settle import settle
from ductile.state.db import StateDB
from ductile.state.breakers import Breaker, opened
from ductile.state.codec import iso
from ductile.state.jobs import Claim, Deferred, Failed
from ductile.state.jobs import Outcome as QueueOutcome
from ductile.state.jobs import Job as QueuedJob

_log = logging.getLogger("ductile.dispatch")
_plugin_log = logging.getLogger("ductile.plugin")
IDLE_MAX = 5.0       # longest sleep with nothing to do: picks up work another process queued
RECORD_BACKOFF = (0.5, 30.0)  # first and longest wait between attempts to record an outcome
T = TypeVar("T")


class Unrecorded(Exception):
    """The shutdown deadline came before the database accepted a finished job's outcome."""
PLUGIN_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
                 "error": logging.ERROR}

ExecutorFactory = Callable[[Runtime, EventSink], Executor]
Settled = Callable[[QueuedJob, str, float], None]  # (job, status recorded, seconds the run took)


class Dispatcher:
    def __init__(self, db: StateDB, runtime: Runtime, make_executor: ExecutorFactory, *,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 health: Health | None = None, on_settled: Settled | None = None) -> None:
        self.db = db
        self.health = health if health is not None else Health()
        self.clock = clock
        self.rand = rand
        self._make_executor = make_executor
        self._gen: tuple[Runtime, Executor] = (runtime, make_executor(runtime, self._collect_event))
        self.on_settled = on_settled
        self._superseded: dict[str, str] = {}  # job id -> why (if_running: cancel)
        self._tls = threading.local()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancelling = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._tickets = 0                      # wake-ups not yet taken by a worker
        self._deferrals: dict[str, int] = {}   # plugin -> gateway faults in a row
        self._paused: dict[str, float] = {}    # plugin -> when its next job may be tried after a gateway fault
        self.finished = 0
        self.requeued = 0

    @property
    def runtime(self) -> Runtime:
        return self._gen[0]

    @property
    def config(self) -> Config:
        return self._gen[0].config

    @property
    def executor(self) -> Executor:
        return self._gen[1]

    def use(self, runtime: Runtime) -> None:
        """Run jobs started from now on with ``runtime`` (a reload); running jobs keep theirs."""
        self._gen = (runtime, self._make_executor(runtime, self._collect_event))

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
            self._tickets = min(self._tickets + n, max(1, len(self._threads)))
            self._wake.notify(n)

    def _idle(self, seconds: float) -> None:
        """Sleep until woken or ``seconds`` pass, unless a wake-up is already waiting."""
        with self._wake:
            if not self._tickets and not self._stop.is_set():
                self._wake.wait(seconds)
            if self._tickets:
                self._tickets -= 1

    def _sleep_for(self, next_due: float | None) -> float:
        wake_at = [t for t in (next_due, *self._paused.values()) if t is not None]
        if not wake_at:
            return IDLE_MAX
        return min(IDLE_MAX, max(0.01, min(wake_at) - self.clock()))

    def _paused_now(self, now: float) -> list[str]:
        """Plugins whose last job hit a gateway fault: one job probes per backoff period,
        instead of every queued job of the plugin being claimed and deferred in turn."""
        return [p for p, until in list(self._paused.items()) if until > now]

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

    def supersede(self, job_id: str, why: str) -> bool:
        """Kill one running job (a schedule's ``if_running: cancel``); it is recorded failed,
        reason ``superseded``. False when it does not run here."""
        with self._lock:
            event = self._live.get(job_id)
            if event is None:
                return False
            self._superseded[job_id] = why
        event.set()
        return True

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- one worker --------------------------------------------------------------------

    def _limit(self, plugin: str) -> int | None:
        return concurrency_limit(self.runtime, plugin)

    def _claim(self) -> Claim:
        now = self.clock()
        return self.db.jobs.claim(now, running_limits=self._limit, exclude_plugins=self._paused_now(now))

    def _work(self) -> None:
        failures = 0
        job: QueuedJob | None = None
        while job is not None or not self._stop.is_set():  # a job already claimed is always run
            if job is None:
                try:
                    claim = self._claim()
                except DuctileError as err:
                    failures += 1
                    self._db_problem(err, "cannot claim a job")
                    self._idle(min(RECORD_BACKOFF[1], RECORD_BACKOFF[0] * 2 ** min(failures, 8)))
                    continue
                failures = 0
                job = claim.job
                if job is None:
                    self._idle(self._sleep_for(claim.next_due))
                    continue
                self.health.resolve(_log, "state:")  # the claim was a write the database accepted
            cancel = threading.Event()
            with self._lock:
                self._live[job.id] = cancel
                if self._cancelling.is_set():  # claimed in the instant the deadline passed
                    cancel.set()
            following: QueuedJob | None = None
            try:
                following = self._run(job, cancel)
            except Unrecorded as err:
                log(_log, logging.ERROR, f"job {job.id} finished but its outcome could not be recorded before the "
                    f"shutdown deadline ({err}); it stays running and is recovered at the next boot",
                    job_id=job.id, plugin=job.plugin)
            except Exception as err:  # noqa: BLE001 - a worker must survive anything one job does
                log(_log, logging.ERROR, f"job {job.id} could not be recorded: {type(err).__name__}: {err}; "
                    "it stays running and is recovered at the next boot", job_id=job.id, plugin=job.plugin)
            finally:
                with self._lock:
                    self._live.pop(job.id, None)
            if self._limit(job.plugin) is not None:
                self.wake()  # a capped plugin has room again: an idle worker may take its next job
            job = following

    def _db_problem(self, err: DuctileError, doing: str) -> None:
        cause = err.cause if isinstance(err, StateError) else err.kind
        self.health.report(_log, f"state:{cause}", f"{doing}: {err.message}", err.fix)

    def _record(self, what: str, action: Callable[[], T], cancel: threading.Event) -> T:
        """Run ``action`` (one write transaction) until the database accepts it. A transient
        fault is retried with backoff; the shutdown deadline (``cancel``) ends the wait."""
        delay = RECORD_BACKOFF[0]
        while True:
            try:
                result = action()
            except StateError as err:
                if not err.transient:
                    raise
                self._db_problem(err, f"cannot record {what}")
                if cancel.wait(delay):
                    raise Unrecorded(err.one_line()) from err
                delay = min(delay * 2, RECORD_BACKOFF[1])
                continue
            self.health.resolve(_log, "state:")
            return result

    @staticmethod
    def _command_type(runtime: Runtime) -> Callable[[str, str], str | None]:
        def command_type(plugin: str, command: str) -> str | None:
            """read | write from the plugin's manifest; None when unknown (counted as a write)."""
            found = runtime.plugins.get(plugin)
            spec = found.manifest.command(command) if found is not None else None
            return spec.type if spec is not None else None
        return command_type

    @staticmethod
    def _state_mode(runtime: Runtime) -> Callable[[str, str], str]:
        def state_mode(plugin: str, command: str) -> str:
            found = runtime.plugins.get(plugin)
            return found.manifest.state_mode(command) if found is not None else "merge"
        return state_mode

    def _collect_event(self, type: str, payload: dict[str, Any]) -> None:
        """Executor events (``plugin.drop_failed``...) are kept with the job and stored in
        its settling transaction."""
        buf = getattr(self._tls, "events", None)
        if buf is not None:
            buf.append((type, payload))
        else:
            self.db.events.record_event(type, payload, plugin=payload.get("plugin"))

    def _execute(self, queued: QueuedJob, cancel: threading.Event,
                 executor: Executor) -> tuple[JobResult, list[tuple[str, dict[str, Any]]]]:
        job = Job(plugin=queued.plugin, command=queued.command,
                  payload=queued.payload if isinstance(queued.payload, dict) else {}, job_id=queued.id,
                  event=queued.event, context={"attempt": queued.attempt, "max_attempts": queued.max_attempts,
                                               "event_depth": queued.event_depth, "parent_job_id": queued.parent_job_id,
                                               "dedupe_key": queued.dedupe_key})
        try:
            state = self.db.plugin_state.get_state(queued.plugin)
        except StateError as err:  # the gateway cannot read its own database: not the plugin's fault
            fault = GatewayFault(f"cannot read the plugin's state: {err.message}", where=err.where, fix=err.fix)
            return JobResult(job, Outcome("failed", False, None, fault, None), None, None), []
        self._tls.events = []
        try:
            result = executor.run(Job(plugin=job.plugin, command=job.command, payload=job.payload,
                                           job_id=job.job_id, event=job.event, context=job.context, state=state),
                                       cancel=cancel)
            return result, list(self._tls.events)
        finally:
            self._tls.events = None

    def _run(self, queued: QueuedJob, cancel: threading.Event) -> QueuedJob | None:
        """Run one job and record it; return the next job, claimed in the same transaction
        that recorded this one (one commit per job instead of two), or None."""
        runtime, executor = self._gen  # this job runs and is recorded on the runtime it started with
        config = runtime.config
        started = time.monotonic()
        result, gateway_events = self._execute(queued, cancel, executor)
        took = time.monotonic() - started
        pc = config.plugins.get(queued.plugin)
        deferrals = self._deferrals.get(queued.plugin, 0) + 1
        decision: QueueOutcome | None = settle(result.outcome, attempt=queued.attempt, max_attempts=queued.max_attempts,
                                               retry=pc.retry if pc is not None else RetryConfig(), now=self.clock(),
                                               rand=self.rand(), deferrals=deferrals)
        with self._lock:
            superseded = self._superseded.pop(queued.id, None)
        if decision is None and superseded is not None:
            decision = Failed(f"cancelled: {superseded}", SUPERSEDED)
        if decision is None:
            self._record(f"the re-queue of job {queued.id}", lambda: self.db.jobs.requeue_running(
                queued.id, "shutdown: killed at the drain deadline, re-queued"), cancel)
            self.requeued += 1
            log(_log, logging.WARNING, f"job {queued.id} killed at the shutdown deadline and re-queued",
                job_id=queued.id, plugin=queued.plugin, command=queued.command)
            return None
        if isinstance(decision, Deferred):  # before the next claim, which must skip this plugin
            self._paused[queued.plugin] = decision.next_attempt_at

        def record() -> tuple[Recorded, QueuedJob | None]:
            with self.db.write(durable=False):  # see StateDB.write: a power loss re-runs, never loses
                rec = record_run(self.db, config, queued, result, decision, gateway_events,
                                 command_type=self._command_type(runtime), state_mode=self._state_mode(runtime))
                following = None if self._stop.is_set() else self._claim().job
            return rec, following

        rec, following = self._record(f"the outcome of job {queued.id} ({queued.plugin}/{queued.command})", record,
                                      cancel)
        if isinstance(decision, Deferred):
            self._deferrals[queued.plugin] = deferrals
            err = result.outcome.error
            self.health.report(_log, f"plugin:{queued.plugin}", f"jobs of plugin {queued.plugin} are deferred: "
                               f"{err.message if err else decision.error}", err.fix if err else "", level=logging.WARNING,
                               job_id=queued.id)
        else:
            self._deferrals.pop(queued.plugin, None)
            self._paused.pop(queued.plugin, None)
            self.finished += 1
            self.health.resolve(_log, f"plugin:{queued.plugin}")
        self._report(queued, result, rec.status, rec.downstream, rec.warnings)
        if rec.breaker is not None:
            self._report_breaker(*rec.breaker)
        if self.on_settled is not None and not isinstance(decision, Deferred):
            self.on_settled(queued, rec.status if rec.status != "queued" else "retried", took)
        if rec.downstream:
            self.wake(len(rec.downstream))
        return following

    def _report_breaker(self, before: Breaker | None, after: Breaker) -> None:
        if opened(before, after):
            log(_log, logging.WARNING, f"breaker of plugin {after.plugin} opened after {after.failures} failed "
                f"scheduled run(s): its schedules pause until {iso(after.retry_at)}, then one run is tried",
                plugin=after.plugin, failures=after.failures, retry_at=iso(after.retry_at),
                fix=f"fix the plugin, then `ductile system breaker {after.plugin} --reset` (API and webhook triggers "
                    "still run it)")
        elif after.state == "closed" and before is not None and before.state != "closed":
            log(_log, logging.INFO, f"breaker of plugin {after.plugin} closed: a scheduled run succeeded",
                plugin=after.plugin)

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
