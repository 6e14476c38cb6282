"""Schedule arithmetic: which slot is due now, and when the next one comes. Pure.

A *slot* is the instant a schedule stands for. ``every: N`` slots are multiples of N
seconds since the epoch, so a restart keeps the same phase; ``cron`` slots are the
matching minutes in the host's local time (as cron does). The scheduler remembers the
last slot it fired per schedule; the decision is then a comparison:

    never seen, every    -> fire the current slot (an interval starts now)
    never seen, cron     -> remember the current slot, fire at the next match
    current > last       -> fire the current slot ONCE, however many were missed
    current <= last      -> nothing to do
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from croniter import croniter  # type: ignore[import-untyped]

from ductile.config.model import Config
from ductile.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    id: str           # stable while the schedule's definition is unchanged
    where: str        # plugins.<name>.schedules[i], for messages
    plugin: str
    command: str
    every: float | None
    cron: str | None
    jitter: float
    max_attempts: int
    payload: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _fingerprint(every: float | None, cron: str | None, command: str) -> str:
    text = f"every={every!r} cron={cron!r} command={command}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def schedules_of(config: Config) -> list[Schedule]:
    """Every schedule of every enabled plugin; a cron expression croniter rejects is a ConfigError."""
    out: list[Schedule] = []
    for name, pc in sorted(config.plugins.items()):
        if not pc.enabled:
            continue
        for i, sc in enumerate(pc.schedules):
            where = f"plugins.{name}.schedules[{i}]"
            if sc.cron is not None and not croniter.is_valid(sc.cron):
                raise ConfigError(f"cron expression {sc.cron!r} is not valid", where=f"{where}.cron",
                                  fix="write minute hour day-of-month month day-of-week, e.g. '0 7 * * *'")
            sid = f"{name}#{i}:{_fingerprint(sc.every, sc.cron, sc.command)}"
            out.append(Schedule(sid, where, name, sc.command, sc.every, sc.cron, sc.jitter, pc.retry.max_attempts,
                                dict(sc.payload)))
    return out


def _cron_prev(expr: str, now: float) -> float:
    start = datetime.fromtimestamp(now).astimezone()
    prev = float(croniter(expr, start).get_prev(float))
    following = float(croniter(expr, datetime.fromtimestamp(prev).astimezone()).get_next(float))
    return following if following <= now else prev


def latest_slot(schedule: Schedule, now: float) -> float:
    """The most recent slot at or before ``now``."""
    if schedule.every is not None:
        return math.floor(now / schedule.every) * schedule.every
    assert schedule.cron is not None
    return _cron_prev(schedule.cron, now)


def next_slot(schedule: Schedule, now: float) -> float:
    """The first slot strictly after ``now``."""
    if schedule.every is not None:
        return (math.floor(now / schedule.every) + 1) * schedule.every
    assert schedule.cron is not None
    return float(croniter(schedule.cron, datetime.fromtimestamp(now).astimezone()).get_next(float))


Action = Literal["fire", "baseline", "wait"]


def decide(schedule: Schedule, last: float | None, now: float) -> tuple[Action, float]:
    """What to do with ``schedule`` at ``now`` given the last slot it fired (see module doc)."""
    slot = latest_slot(schedule, now)
    if last is None:
        return ("fire" if schedule.every is not None else "baseline"), slot
    if slot > last:
        return "fire", slot
    return "wait", slot
