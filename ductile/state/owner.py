"""Who holds a running job outside serve, and whether that process still lives.

``plugin run`` records its job as running with a token naming its process — the pid and
the process's start time, because a pid alone is reused. serve asks ``is_alive`` before it
treats such a job as an orphan (at boot, and periodically): a dead holder's job is
recovered at once instead of blocking its plugin until serve's next restart.
"""

from __future__ import annotations

import os
import re

import psutil

_TOKEN = re.compile(r"pid=(?P<pid>\d+) started=(?P<started>[0-9.]+)")


def process_token(kind: str = "plugin-run") -> str:
    """``<kind> pid=N started=T`` for this process."""
    return f"{kind} pid={os.getpid()} started={psutil.Process().create_time():.2f}"


def is_alive(token: str) -> bool:
    """Does the process a token names still run? An unreadable token counts as alive: a job
    is only ever taken from a holder proven gone."""
    m = _TOKEN.search(token)
    if m is None:
        return True
    try:
        started = psutil.Process(int(m["pid"])).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    return bool(abs(float(started) - float(m["started"])) < 0.05)
