"""The running gateway: start scheduler, workers and the HTTP listener after a successful
boot, wait for SIGTERM/SIGINT, then drain.

Drain (SPEC §8 "SIGTERM drains"):
  1. STOPPING=1 to systemd; the API answers 503 to new jobs; the scheduler stops.
  2. Workers claim nothing new; running jobs get ``service.shutdown_timeout`` to finish
     (a second signal skips the wait).
  3. Jobs still running are killed through the executor's kill path and re-queued without
     charging an attempt — nothing is lost, nothing is blamed on the plugin.
  4. The listener and the control socket close, the database and the instance lock are
     released, exit 0.

uvicorn runs in its own thread on a socket bound during boot; the main thread owns the
signal handlers, so uvicorn's own handlers never decide when the gateway stops.

SIGHUP reloads (``reload``): the main thread builds the next generation and swaps it in,
or keeps the running one and says why. ``ductile system reload`` (the control channel)
and ``POST /system/reload`` call the same method; one reload runs at a time. systemd
hears RELOADING=1 (with MONOTONIC_USEC, as ``Type=notify-reload`` expects) and READY=1.
"""


from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ductile.control import ControlServer
from ductile.errors import DuctileError, UsageError
from ductile.runtime.wiring import make_executor, record_boot
from ductile.serve import opsfacts
from ductile.serve.api import ApiContext, build_app
from ductile.serve.bootseq import Booted
from ductile.serve.bounded import Guard, GuardMiddleware, Limits, guarded_protocol
from ductile.serve.breakers import breaker_report
from ductile.serve.control import StatusSource, containment_of, start_control
from ductile.serve.dispatcher import Dispatcher
from ductile.serve.health import Health
from ductile.serve.intake import Intake
from ductile.serve.logs import LEVELS, Redactor, log
from ductile.serve.maintenance import Maintenance
from ductile.serve.metrics import Metrics
from ductile.serve.notify import notify
from ductile.serve.record import record_recovered
from ductile.serve.reload import Generation, ReloadHistory, ReloadResult, attempt
from ductile.serve.scheduler import Scheduler
from ductile.serve.scopes import TokenTable
from ductile.serve.secrets import SecretSource

SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (CPython's default: 0.005)
_log = logging.getLogger("ductile.serve")


class SwitchApp:
    """The ASGI app of the current generation: a reload replaces ``app`` in one assignment;
    a request already being answered keeps the app it started with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Gateway:
    def __init__(self, booted: Booted, redactor: Redactor | None = None, *,
                 secret_source: SecretSource | None = None) -> None:
        self.b = booted
        rt = booted.runtime
        self.gen = Generation(booted.loaded, rt, list(booted.schedules), booted.secrets)
        self.health = Health()
        self.reloads = ReloadHistory()
        self.redactor = redactor
        self.secret_source = secret_source
        self._reload_lock = threading.Lock()
        self.started = time.monotonic()
        self.metrics = Metrics(self._metric_facts)
        self.dispatcher = Dispatcher(booted.db, rt, lambda runtime, emit: make_executor(runtime, booted.db, emit=emit),
                                     health=self.health, on_settled=lambda job, status, took: self.metrics.settled(
                                         job.plugin, job.command, status, took))
        self.scheduler = Scheduler(booted.db, booted.schedules, on_enqueue=self.dispatcher.wake, health=self.health,
                                   config=rt.config, supersede=self.dispatcher.supersede)
        self.maintenance = Maintenance(booted.db, self.health, retention=lambda: self.gen.config.state.retention,
                                       on_dead=self._hook_recovered)
        self.intake = Intake(booted.db)
        self.draining = threading.Event()
        self.ctx = self._context(self.gen)
        self.app = SwitchApp(build_app(self.ctx))
        self._signals = 0
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._hup = 0
        self._server: object | None = None
        self._server_thread: threading.Thread | None = None
        self.control: ControlServer | None = None
        if redactor is not None:
            redactor.add(booted.secrets.values())

    def _context(self, gen: Generation) -> ApiContext:
        """The API's view of one generation; what outlives a reload (drain, health, intake,
        uptime) is shared between them."""
        return ApiContext(self.b.db, gen.runtime, TokenTable(gen.secrets.tokens), dict(gen.secrets.webhook_keys),
                          wake=self.dispatcher.wake, running=self.dispatcher.running, draining=self.draining,
                          started=self.started, health=self.health, intake=self.intake, reload=self.reload,
                          ops=self.ops, metrics=self.metrics)

    def _hook_recovered(self, job_ids: list[str]) -> None:
        """job.dead for jobs recovery settled dead (boot, or an orphan of ``plugin run``)."""
        hooked = 0
        for job_id in job_ids:
            try:
                hooked += record_recovered(self.b.db, self.gen.config, job_id,
                                           Dispatcher._command_type(self.gen.runtime))
            except DuctileError as err:
                log(_log, logging.WARNING, f"job {job_id} is dead but its job.dead event could not be stored: "
                    f"{err.message}", job_id=job_id, fix=err.fix)
        if hooked:
            self.dispatcher.wake(hooked)

    def ops(self) -> dict[str, Any]:
        return opsfacts.ops(self.b.db, self.reloads, self.gen.number)

    def _metric_facts(self) -> dict[str, Any]:
        rt = self.gen.runtime
        try:
            depth: int | None = self.b.db.jobs.queue_depth()
        except DuctileError:
            depth = None
        return {"queue_depth": depth, "running": self.dispatcher.running(), "breakers": opsfacts.breakers(self.b.db),
                "posture": rt.assessment.verdict.posture, "containment": containment_of(rt),
                "reloads": self.reloads.as_dict(), "generation": self.gen.number}

    # -- start -------------------------------------------------------------------------

    def _start_http(self) -> None:
        sock = self.b.listener
        if sock is None:
            return
        import asyncio

        import uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        api = self.b.runtime.config.api
        guard = Guard(Limits(self.b.nofile.connections, api.header_timeout, api.body_timeout))
        # proxy_headers off: the gateway is not behind a proxy it knows of, and a local client
        # must not be able to rewrite the peer address the logs show with X-Forwarded-For
        config = uvicorn.Config(GuardMiddleware(self.app, guard), log_config=None, access_log=False,
                                lifespan="off", server_header=False, proxy_headers=False,
                                http=guarded_protocol(guard, H11Protocol),
                                timeout_keep_alive=api.keepalive_timeout,  # type: ignore[arg-type]
                                timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        self._server = server
        self._server_thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                                               name="http", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + 30
        while not server.started and self._server_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def start(self) -> None:
        # The gateway's process, not a library: every step of a job ends in a blocking call
        # (the fork and exec, the plugin's output, a commit) after which a worker needs the
        # GIL back; with the HTTP thread parsing a burst of requests it waited up to the
        # whole default interval (5 ms) each time. The gateway's threads all block often,
        # so a shorter interval costs little: measured side by side, serve/bare 3.18 -> 2.64
        # (bench/throughput.py).
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._hook_recovered([job_id for job_id, status in self.b.recovered if status == "dead"])
        self.intake.start()
        cfg = self.b.runtime.config
        listen = cfg.api.listen if self.b.listener is not None else "off"
        self.control = start_control(StatusSource(self.b.db, lambda: self.gen.runtime, self.dispatcher.running,
                                                  self.draining.is_set, listen, lambda: len(self.gen.schedules),
                                                  self.ops),
                                     {"reload": lambda _req: self.reload("control").as_dict(),
                                      "breaker": self._breaker_op})
        self.dispatcher.start()
        self.scheduler.start()
        self.maintenance.start()
        # said before the listener answers, so whoever sees /healthz can read it in the log
        nofile = self.b.nofile
        if self.b.listener is not None:
            raised = f"raised from {nofile.soft_before}" if nofile.soft != nofile.soft_before else "kept"
            log(_log, logging.INFO, f"open files: soft limit {nofile.soft} ({raised}; hard {nofile.hard}); "
                f"at most {nofile.connections} API connection(s)", nofile=nofile.soft, connections=nofile.connections)
            if nofile.note:
                log(_log, logging.WARNING, nofile.note)
        self._start_http()
        tokens = len(self.b.secrets.tokens)
        log(_log, logging.INFO, f"serving: api {listen}, {cfg.service.max_workers} worker(s), "
            f"{len(self.b.schedules)} schedule(s), {len(self.b.runtime.plugins)} plugin(s)",
            listen=listen, workers=cfg.service.max_workers, tokens=tokens, webhooks=len(cfg.webhooks))
        if self.b.listener is not None and not tokens:
            log(_log, logging.WARNING, "api.tokens is empty: only /healthz and webhooks will answer",
                fix="add api.tokens with secret_refs into the vault")
        notify("READY=1", f"STATUS=serving: {self.b.runtime.assessment.verdict.posture}, api {listen}")

    # -- signals -----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()
        self._wakeup.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._hup += 1
        self._wakeup.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def wait(self) -> int:
        """Block until a signal (0) or until the HTTP listener died under us (1: a gateway
        whose API silently vanished is worse than one that stops and says so). SIGHUP
        reloads here, on the main thread, and waits on."""
        while True:
            self._wakeup.wait(0.5)
            self._wakeup.clear()
            if self._stop.is_set():
                return 0
            if self._hup:
                self._hup = 0
                self.reload("signal")
            if self._server_thread is not None and not self._server_thread.is_alive():
                log(_log, logging.ERROR, "the HTTP listener stopped unexpectedly; shutting down",
                    fix="see the error above; restart the gateway")
                return 1

    # -- reload ------------------------------------------------------------------------

    def reload(self, source: str) -> ReloadResult:
        """Re-read the config and swap the runtime in, or keep the running one and say why."""
        with self._reload_lock:
            if self.draining.is_set():
                return ReloadResult(False, source, time.time(), self.gen.number, "the gateway is shutting down; "
                                    "nothing was reloaded", "start the gateway again instead")
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading the config")
            log(_log, logging.INFO, f"reload requested ({source}): reading {self.gen.loaded.path}", source=source)
            result = attempt(self.gen, self.b.db, source, self._swap, secret_source=self.secret_source)
            self.reloads.add(result)
            if result.ok:
                log(_log, logging.INFO, result.message, source=source, generation=result.generation)
            else:
                log(_log, logging.ERROR, f"reload refused, still running generation {result.generation}: "
                    f"{result.message}", source=source, fix=result.fix, restart_required=result.restart_required)
            posture = self.gen.runtime.assessment.verdict.posture
            status = "serving" if result.ok else "serving the previous config (last reload failed)"
            notify("READY=1", f"STATUS={status}: {posture}, generation {self.gen.number}")
            return result

    def _swap(self, gen: Generation) -> None:
        """Hand the new generation to everything that reads it; each swap is one assignment."""
        if self.redactor is not None:
            self.redactor.add(gen.secrets.values())  # before any line could carry a new token
        old_level = self.gen.config.service.log_level
        self.gen = gen
        self.b.runtime = gen.runtime
        self.dispatcher.use(gen.runtime)
        self.scheduler.replace(gen.schedules, gen.config)
        self.ctx = self._context(gen)
        self.app.app = build_app(self.ctx)
        if gen.config.service.log_level != old_level:
            logging.getLogger().setLevel(LEVELS.get(gen.config.service.log_level, logging.INFO))
        record_boot(gen.runtime, self.b.db)
        levels = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
        for level, line in gen.runtime.notes():
            log(_log, levels[level], line)

    def _breaker_op(self, request: dict[str, Any]) -> dict[str, Any]:
        """``ductile system breaker [PLUGIN] [--reset]`` over the control channel."""
        plugin = request.get("plugin")
        if plugin is not None and not isinstance(plugin, str):
            raise UsageError("plugin must be a name", where="breaker", fix="ductile system breaker [PLUGIN]")
        if plugin is not None and plugin not in self.gen.config.plugins:
            raise UsageError(f"no plugin {plugin} in the running config", where="breaker",
                             fix="ductile system breaker lists the breakers")
        reset: list[str] = []
        if request.get("reset"):
            reset = self.b.db.breakers.reset(plugin)
            for name in reset:
                log(_log, logging.WARNING, f"breaker of plugin {name} reset by the operator: its schedules run again",
                    plugin=name)
        return breaker_report(self.b.db, self.gen.config, plugin, reset)

    # -- drain -------------------------------------------------------------------------

    def shutdown(self) -> None:
        cfg = self.b.runtime.config
        notify("STOPPING=1", "STATUS=draining")
        with self._reload_lock:  # a reload in progress finishes first; none starts after
            self.draining.set()
        self.scheduler.stop()
        self.maintenance.stop()
        self.dispatcher.stop_claiming()
        running = self.dispatcher.running()
        log(_log, logging.INFO, f"draining: {running} running job(s) get up to {cfg.service.shutdown_timeout:g}s",
            running=running, shutdown_timeout=cfg.service.shutdown_timeout)
        deadline = time.monotonic() + cfg.service.shutdown_timeout
        first = self._signals
        while self.dispatcher.running() and time.monotonic() < deadline and self._signals <= first:
            time.sleep(0.05)
        killed = self.dispatcher.cancel_running() if self.dispatcher.running() else []
        if killed:
            log(_log, logging.WARNING, f"shutdown deadline: killing {len(killed)} job(s); they are re-queued",
                jobs=killed)
        if not self.dispatcher.join(cfg.service.kill_grace + 30):
            log(_log, logging.ERROR, "a worker did not stop; its job stays running and is recovered at the next boot")
        server = self._server
        if server is not None:
            server.should_exit = True  # type: ignore[attr-defined]
            if self._server_thread is not None:
                self._server_thread.join(10)
        self.intake.stop()
        rt = self.b.runtime
        if rt.containment is not None:
            for account, n in rt.containment.sweep_accounts(cfg):
                if n:
                    log(_log, logging.WARNING, f"shutdown sweep: killed {n} leftover process(es) of account {account}",
                        account=account, killed=n)
        log(_log, logging.INFO, f"stopped: {self.dispatcher.finished} job(s) finished, "
            f"{self.dispatcher.requeued} re-queued", finished=self.dispatcher.finished,
            requeued=self.dispatcher.requeued)
        if self.control is not None:
            self.control.stop()
        self.b.close()


def run(booted: Booted, redactor: Redactor | None = None) -> int:
    """Serve until SIGTERM/SIGINT (SIGHUP reloads), then drain. Returns the exit code."""
    gw = Gateway(booted, redactor)
    gw.install_signal_handlers()
    code = 1
    try:
        gw.start()
        code = gw.wait()
    finally:
        gw.shutdown()
    return code
