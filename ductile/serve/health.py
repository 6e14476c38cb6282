"""Is the running gateway healthy, and if not, why: the ``degraded`` state and its reasons.

A gateway that cannot write its database (disk full, read-only mount, locked) or cannot
start a plugin for a reason of its own (the age key unreadable, a plugin directory gone)
keeps running: it holds finished outcomes and defers jobs until the cause goes away. While
that lasts it must *say* so — in ``/healthz`` (``status: degraded`` and the reasons), in
``ductile system status``, and in the log — without flooding the log: each cause is logged
when it first appears, then at most once per ``LOG_EVERY`` seconds with a count, and once
more when it clears.

``Health`` is the thread-safe record (an edge only in that it reads the clock);
``summarize`` is the pure verdict that ``/healthz`` and ``system status`` share.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ductile.serve.logs import log

LOG_EVERY = 60.0  # seconds between repeated log lines for one ongoing cause


@dataclass(frozen=True)
class Problem:
    """One ongoing cause of degradation."""

    key: str        # what it is about: ``state:disk_full``, ``plugin:echo``
    message: str
    fix: str
    since: float    # epoch seconds of the first occurrence
    count: int      # occurrences so far (refused triggers, failed writes, deferred jobs)

    def as_dict(self) -> dict[str, Any]:
        return {"cause": self.key, "message": self.message, "fix": self.fix, "since": round(self.since, 3),
                "count": self.count}


@dataclass(frozen=True)
class HealthSummary:
    status: str  # ok | degraded | draining
    reasons: tuple[Problem, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "degraded": [p.as_dict() for p in self.reasons]}


def summarize(problems: Sequence[Problem], *, draining: bool) -> HealthSummary:
    """``draining`` wins (the gateway is going away); any problem makes it ``degraded``."""
    ordered = tuple(sorted(problems, key=lambda p: (p.since, p.key)))
    if draining:
        return HealthSummary("draining", ordered)
    return HealthSummary("degraded" if ordered else "ok", ordered)


class Health:
    """The live set of problems, with rate-limited logging per cause."""

    def __init__(self, *, clock: Callable[[], float] = time.time, log_every: float = LOG_EVERY) -> None:
        self._clock = clock
        self._every = log_every
        self._lock = threading.Lock()
        self._problems: dict[str, Problem] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # key -> (when last logged, count then)

    def problems(self) -> list[Problem]:
        with self._lock:
            return list(self._problems.values())

    def summary(self, *, draining: bool = False) -> HealthSummary:
        return summarize(self.problems(), draining=draining)

    def report(self, logger: logging.Logger, key: str, message: str, fix: str, *, level: int = logging.ERROR,
               **fields: Any) -> Problem:
        """Record one occurrence of ``key``; log it if it is new or ``log_every`` has passed."""
        now = self._clock()
        with self._lock:
            old = self._problems.get(key)
            problem = Problem(key, message, fix, now, 1) if old is None else replace(
                old, message=message, fix=fix, count=old.count + 1)
            self._problems[key] = problem
            last = self._logged.get(key)
            due = last is None or now - last[0] >= self._every
            if due:
                self._logged[key] = (now, problem.count)
        if due:
            repeats = problem.count - (last[1] if last else 0)
            suffix = f" ({repeats} times in the last {now - last[0]:.0f}s)" if last and repeats > 1 else ""
            log(logger, level, f"degraded: {message}{suffix}", cause=key, count=problem.count, fix=fix, **fields)
        return problem

    def resolve(self, logger: logging.Logger, prefix: str) -> list[Problem]:
        """Clear every problem whose key starts with ``prefix``; log each one that was open."""
        with self._lock:
            gone = [p for k, p in self._problems.items() if k.startswith(prefix)]
            for p in gone:
                del self._problems[p.key]
                self._logged.pop(p.key, None)
        for p in gone:
            log(logger, logging.WARNING, f"recovered: {p.key} after {p.count} occurrence(s) since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(p.since))}", cause=p.key, count=p.count)
        return gone
