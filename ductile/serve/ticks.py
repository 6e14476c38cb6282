"""Schedule arithmetic: which slot is due now, and when the next one comes. Pure (given
the zone; ``host_zone`` is the one function that reads the host's setting).

A *slot* is the instant a schedule stands for. ``every: N`` slots are multiples of N
seconds since the epoch, so a restart keeps the same phase; ``cron`` slots are the
matching minutes on the wall clock of a zone: the schedule's ``timezone:`` (an IANA
name), else the host's. The scheduler remembers the last slot it fired per schedule; the
decision is then a comparison:

    never seen, every    -> fire the current slot (an interval starts now)
    never seen, cron     -> remember the current slot, fire at the next match
    current > last       -> fire the current slot ONCE, however many were missed
    current <= last      -> nothing to do

Daylight saving time — one policy, for every zone and every transition:

    a local time skipped by a change (spring: 02:00-03:00 does not exist)
        -> runs once, at the instant of the change (03:00 new time); several
           matches inside the gap (*/15 2 * * *) are still one run
    a local time repeated by a change (autumn: 02:00-03:00 happens twice)
        -> runs once, at its first occurrence; the repeat does not run again
    (a skipped run that lands on the same instant as a regular one is that one run)

So a daily job runs exactly once on both change days, and never twice in an hour. This
is ``instant()``: a wall-clock time maps to an instant that never decreases as the wall
time increases, and the "last slot fired" memory does the rest.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from ductile.config.model import Config
from ductile.errors import ConfigError


@functools.lru_cache(maxsize=1)
def host_zone() -> tzinfo:
    """The host's zone, as cron reads it: ``$TZ`` if it names an IANA zone, else
    /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return timezone.utc


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
    timezone: str | None = None  # the schedule's IANA zone; None: the host's
    zone: tzinfo = field(default_factory=host_zone, hash=False, compare=False, repr=False)


def _fingerprint(every: float | None, cron: str | None, command: str, zone: str | None = None) -> str:
    text = f"every={every!r} cron={cron!r} command={command}" + (f" timezone={zone}" if zone else "")
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
            sid = f"{name}#{i}:{_fingerprint(sc.every, sc.cron, sc.command, sc.timezone)}"
            zone = ZoneInfo(sc.timezone) if sc.timezone else host_zone()  # validated by the config decoder
            out.append(Schedule(sid, where, name, sc.command, sc.every, sc.cron, sc.jitter, pc.retry.max_attempts,
                                dict(sc.payload), sc.timezone, zone))
    return out


def _wall(now: float, zone: tzinfo) -> datetime:
    """The naive wall-clock time in ``zone`` at ``now``."""
    return datetime.fromtimestamp(now, zone).replace(tzinfo=None)


def instant(wall: datetime, zone: tzinfo) -> float:
    """The instant a wall-clock time in ``zone`` stands for, under the DST policy above: a
    repeated time is its first occurrence (fold=0); a skipped time is the instant of the
    change that skipped it."""
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    if _wall(first, zone) == wall:
        return first
    # skipped: fold=0 read it with the offset from before the change, which lands after the
    # change; fold=1 with the one from after, which lands before it. The change lies between.
    lo, hi = wall.replace(tzinfo=zone, fold=1).timestamp(), first
    if lo > hi:
        lo, hi = hi, lo
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:  # the first second with the new offset
        mid = math.floor((lo + hi) / 2)
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return float(math.ceil(hi))


def _prev_match(expr: str, wall: datetime) -> datetime:
    """The latest matching minute at or before ``wall``."""
    minute = wall.replace(second=0, microsecond=0)
    if croniter.match(expr, minute):
        return minute
    return croniter(expr, minute).get_prev(datetime)  # type: ignore[no-any-return]


def _next_match(expr: str, wall: datetime) -> datetime:
    return croniter(expr, wall).get_next(datetime)  # type: ignore[no-any-return]


def _cron_latest(expr: str, zone: tzinfo, now: float) -> float:
    match = _prev_match(expr, _wall(now, zone))
    # during the repeat of an autumn change the wall clock reads earlier than matches that
    # already ran (in the first pass): step forward over those, they are <= now as instants
    while True:
        following = _next_match(expr, match)
        if instant(following, zone) > now:
            return instant(match, zone)
        match = following


def _cron_next(expr: str, zone: tzinfo, now: float) -> float:
    match = _next_match(expr, _wall(now, zone))
    while (at := instant(match, zone)) <= now:
        match = _next_match(expr, match)
    return at


def latest_slot(schedule: Schedule, now: float) -> float:
    """The most recent slot at or before ``now``."""
    if schedule.every is not None:
        return math.floor(now / schedule.every) * schedule.every
    assert schedule.cron is not None
    return _cron_latest(schedule.cron, schedule.zone, now)


def next_slot(schedule: Schedule, now: float) -> float:
    """The first slot strictly after ``now``."""
    if schedule.every is not None:
        return (math.floor(now / schedule.every) + 1) * schedule.every
    assert schedule.cron is not None
    return _cron_next(schedule.cron, schedule.zone, now)


Action = Literal["fire", "baseline", "wait"]


def decide(schedule: Schedule, last: float | None, now: float) -> tuple[Action, float]:
    """What to do with ``schedule`` at ``now`` given the last slot it fired (see module doc)."""
    slot = latest_slot(schedule, now)
    if last is None:
        return ("fire" if schedule.every is not None else "baseline"), slot
    if slot > last:
        return "fire", slot
    return "wait", slot
