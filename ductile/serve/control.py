"""What the running gateway answers on its local control channel (``ductile.control``).

``status`` reports the gateway as it is, not as files suggest: its pid and start time, the
posture the boot gate chose (and the posture line it logged), the containment mode it
runs jobs under, queue depth, running jobs, the last finished job, its own RSS and
uptime (psutil, measured in this process, so it is right whoever asks), breakers that
are not closed and the reload results (``opsfacts``, shared with /healthz and /metrics).
``reload`` and ``breaker`` are the gateway's own handlers, registered beside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ductile import __version__
from ductile.control import ControlServer, Handler, socket_path
from ductile.runtime.boot import Runtime
from ductile.serve.logs import log
from ductile.state.db import StateDB

_log = logging.getLogger("ductile.serve")


def containment_of(runtime: Runtime) -> str | None:
    """The containment mode the runtime reports (SPEC §5.9), read, never recomputed here;
    None while the runtime carries no such field."""
    mode = getattr(runtime, "containment", None)
    return None if mode is None else str(getattr(mode, "mode", mode))


@dataclass
class StatusSource:
    """The live facts ``status`` reads; the gateway fills it with its own objects (callables
    where a reload replaces the object)."""

    db: StateDB
    runtime_of: Callable[[], Runtime]
    running: Callable[[], int]
    draining: Callable[[], bool]
    listen: str
    schedules: Callable[[], int]
    ops: Callable[[], dict[str, Any]] = lambda: {}

    @property
    def runtime(self) -> Runtime:
        return self.runtime_of()


def status(src: StatusSource) -> dict[str, Any]:
    import psutil

    rt = src.runtime
    verdict = rt.assessment.verdict
    last = src.db.jobs.last_finished()
    me = psutil.Process()
    with me.oneshot():
        rss = me.memory_info().rss
        threads = me.num_threads()
        born = me.create_time()
    return {
        "pid": os.getpid(),
        "since": datetime.fromtimestamp(born, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uptime_seconds": round(max(0.0, time.time() - born), 1),
        "version": __version__,
        "status": "draining" if src.draining() else "serving",
        "config": rt.loaded.path,
        "state": rt.config.state.path,
        "posture": verdict.posture,
        "cell": verdict.cell,
        "posture_line": rt.posture_line(),
        "containment": containment_of(rt),
        "gateway_uid": rt.assessment.gateway_uid,
        "api": src.listen,
        "plugins": len(rt.plugins),
        "schedules": src.schedules(),
        "queue_depth": src.db.jobs.queue_depth(),
        "running_jobs": src.running(),
        "last_job": None if last is None else {
            "id": last.id, "plugin": last.plugin, "command": last.command, "status": last.status,
            "finished_at": last.as_dict()["finished_at"]},
        "rss_bytes": rss,
        "threads": threads,
        **src.ops(),
    }


def start_control(src: StatusSource, extra: dict[str, Handler] | None = None) -> ControlServer | None:
    """Open the control socket beside the state database. A gateway that cannot open it
    still serves (jobs matter more than status) and says so once."""
    handlers: dict[str, Handler] = {"status": lambda _req: status(src), **(extra or {})}
    server = ControlServer(socket_path(src.runtime.config.state.path), handlers)
    try:
        server.start()
    except OSError as err:
        log(_log, logging.WARNING, f"control channel unavailable: {err.strerror or err}; "
            "`ductile system status` cannot ask this gateway", path=server.path,
            fix="make the state directory writable by the gateway and restart it")
        return None
    return server
