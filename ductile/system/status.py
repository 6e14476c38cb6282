"""``ductile system status``: ask the running gateway, over its control channel, how it is.

Whether a gateway is running is the kernel's answer, not a guess from a pid file: the
instance lock's holder (``/proc/locks``) and whether anything answers on the control
socket. The three outcomes, and the exit codes the command gives them:

    answered        the gateway's own report (pid, since, posture, containment, queue,
                    running jobs, last job, RSS, uptime)                              exit 0
    not answering   a gateway holds the lock but the channel failed or is not ours:
                    its pid and what psutil can see of it, and why                    exit 1
    not running     nobody holds the lock; the ledger's queue and last job if this
                    user can read the database                                        exit 3
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ductile.config import LoadedConfig
from ductile.control import ControlError, ask, socket_path
from ductile.state.instance import InstanceLock

ANSWERED, NOT_ANSWERING, NOT_RUNNING = 0, 1, 3


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_facts(pid: int) -> dict[str, Any]:
    """What psutil can see of the gateway process from the outside."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            born = proc.create_time()
            return {"since": _iso(born), "uptime_seconds": round(max(0.0, time.time() - born), 1),
                    "rss_bytes": proc.memory_info().rss}
    except (psutil.Error, OSError):
        return {}


def ledger_facts(state_path: str) -> dict[str, Any]:
    """Queue depth and last finished job from the database, read-only; {} if unreadable."""
    try:
        conn = sqlite3.connect(f"file:{quote(state_path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        depth = int(conn.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0])
        running = int(conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0])
        row = conn.execute("SELECT id, plugin, command, status, finished_at FROM jobs WHERE finished_at IS NOT NULL"
                           " ORDER BY finished_at DESC, rowid DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    last = None if row is None else {"id": row[0], "plugin": row[1], "command": row[2], "status": row[3],
                                     "finished_at": _iso(row[4])}
    return {"queue_depth": depth, "jobs_marked_running": running, "last_job": last}


def gateway_status(loaded: LoadedConfig) -> tuple[int, dict[str, Any]]:
    """(exit code, report) for the gateway of this config."""
    state = loaded.config.state.path
    base = {"config": loaded.path, "state": state, "control_socket": socket_path(state)}
    pid = InstanceLock.for_state(state).holder()
    try:
        report = ask(socket_path(state), "status")
    except ControlError as err:
        if pid is None and err.reason in ("absent", "stale"):
            return NOT_RUNNING, {**base, "running": False, "answered": False,
                                 "detail": "no gateway holds this state database's instance lock",
                                 **ledger_facts(state)}
        return NOT_ANSWERING, {**base, "running": pid is not None, "answered": False, "pid": pid,
                               "error": err.message, "fix": err.fix, **(process_facts(pid) if pid else {})}
    return ANSWERED, {**base, "running": True, "answered": True, **report}


RELOAD_TIMEOUT = 120.0  # a reload re-runs the reconcile and re-reads the vault: allow it time
RELOADED, RELOAD_FAILED, RESTART_REQUIRED = 0, 1, 2


def gateway_reload(loaded: LoadedConfig) -> tuple[int, dict[str, Any]]:
    """(exit code, report) for ``ductile system reload``: 0 reloaded, 1 refused (the running
    config is kept) or the gateway did not answer, 2 the change needs a restart, 3 no
    gateway runs for this config."""
    state = loaded.config.state.path
    base = {"config": loaded.path, "control_socket": socket_path(state)}
    try:
        result = ask(socket_path(state), "reload", timeout=RELOAD_TIMEOUT)
    except ControlError as err:
        pid = InstanceLock.for_state(state).holder()
        if pid is None and err.reason in ("absent", "stale"):
            return NOT_RUNNING, {**base, "reloaded": False, "running": False,
                                 "message": "no gateway is running for this config; nothing to reload",
                                 "fix": "start it: systemctl start ductile (or ductile serve)"}
        return RELOAD_FAILED, {**base, "reloaded": False, "running": pid is not None, "pid": pid,
                               "message": err.message, "fix": err.fix}
    if result.get("reloaded"):
        return RELOADED, {**base, **result}
    return (RESTART_REQUIRED if result.get("restart_required") else RELOAD_FAILED), {**base, **result}


def gateway_breakers(loaded: LoadedConfig, plugin: str | None, reset: bool) -> tuple[int, dict[str, Any]]:
    """(exit code, report) for ``ductile system breaker``: asks the running gateway; with
    none running, reads (or, with ``reset``, writes) the state database directly."""
    state = loaded.config.state.path
    try:
        return ANSWERED, {"from": "gateway", **ask(socket_path(state), "breaker", {"plugin": plugin, "reset": reset})}
    except ControlError as err:
        if err.reason not in ("absent", "stale") or InstanceLock.for_state(state).holder() is not None:
            raise
    from ductile.errors import UsageError
    from ductile.serve.breakers import breaker_report
    from ductile.state.db import open_state

    if plugin is not None and plugin not in loaded.config.plugins:
        raise UsageError(f"no plugin {plugin} in {loaded.path}", where="breaker",
                         fix="ductile system breaker lists the breakers")
    with open_state(state, create=False) if not reset else open_state(state) as db:
        done = db.breakers.reset(plugin) if reset else []
        return ANSWERED, {"from": "database (no gateway running)", **breaker_report(db, loaded.config, plugin, done)}
