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
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from ductile.control import ControlServer
from ductile.runtime.wiring import make_executor
from ductile.serve.api import ApiContext, build_app
from ductile.serve.bootseq import Booted
from ductile.serve.bounded import Guard, GuardMiddleware, Limits, guarded_protocol
from ductile.serve.control import StatusSource, start_control
from ductile.serve.dispatcher import Dispatcher
from ductile.serve.health import Health
from ductile.serve.intake import Intake
from ductile.serve.logs import Redactor, log
from ductile.serve.maintenance import Maintenance
from ductile.serve.notify import notify
from ductile.serve.scheduler import Scheduler
from ductile.serve.scopes import TokenTable

_log = logging.getLogger("ductile.serve")


class Gateway:
    def __init__(self, booted: Booted, redactor: Redactor | None = None) -> None:
        self.b = booted
        rt = booted.runtime
        self.health = Health()
        self.dispatcher = Dispatcher(booted.db, rt, lambda emit: make_executor(rt, booted.db, emit=emit),
                                     health=self.health)
        self.scheduler = Scheduler(booted.db, booted.schedules, on_enqueue=self.dispatcher.wake, health=self.health)
        self.maintenance = Maintenance(booted.db, self.health)
        self.intake = Intake(booted.db)
        self.ctx = ApiContext(booted.db, rt, TokenTable(booted.secrets.tokens), dict(booted.secrets.webhook_keys),
                              wake=self.dispatcher.wake, running=self.dispatcher.running, health=self.health,
                              intake=self.intake)
        self._signals = 0
        self._stop = threading.Event()
        self._server: object | None = None
        self._server_thread: threading.Thread | None = None
        self.control: ControlServer | None = None
        if redactor is not None:
            redactor.add(booted.secrets.values())

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
        config = uvicorn.Config(GuardMiddleware(build_app(self.ctx), guard), log_config=None, access_log=False,
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
        self.intake.start()
        cfg = self.b.runtime.config
        listen = cfg.api.listen if self.b.listener is not None else "off"
        self.control = start_control(StatusSource(self.b.db, self.b.runtime, self.dispatcher.running,
                                                  self.ctx.draining.is_set, listen, len(self.b.schedules)))
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

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def wait(self) -> int:
        """Block until a signal (0) or until the HTTP listener died under us (1: a gateway
        whose API silently vanished is worse than one that stops and says so)."""
        while not self._stop.wait(0.5):
            if self._server_thread is not None and not self._server_thread.is_alive():
                log(_log, logging.ERROR, "the HTTP listener stopped unexpectedly; shutting down",
                    fix="see the error above; restart the gateway")
                return 1
        return 0

    # -- drain -------------------------------------------------------------------------

    def shutdown(self) -> None:
        cfg = self.b.runtime.config
        notify("STOPPING=1", "STATUS=draining")
        self.ctx.draining.set()
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
    """Serve until SIGTERM/SIGINT, then drain. Returns the exit code."""
    gw = Gateway(booted, redactor)
    gw.install_signal_handlers()
    code = 1
    try:
        gw.start()
        code = gw.wait()
    finally:
        gw.shutdown()
    return code
