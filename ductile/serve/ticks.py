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

Policies (``plan``), applied in this order to the slots ``decide`` finds due:

    one-shot       at: <instant> fires once at that instant; after: D fires once, D after a
                   gateway first saw the schedule (the memory keeps both from firing twice)
    catch_up       a slot is *missed* when it is more than MISSED_AFTER old when seen:
                     run_once  the latest due slot runs once (the default)
                     skip      a missed slot is recorded as seen and does not run
                     run_all   every slot since the last one runs, oldest first, at most
                               CATCH_UP_MAX (the latest ones)
    only_between   slots whose wall-clock time (in the schedule's zone) is outside
    not_on         [start, end) or on a barred weekday do not run; the window may wrap midnight.
                   Wall clock means what a clock on the wall shows: in an autumn repeat the
                   hour is inside the window twice, a spring gap is never inside it.
    breaker        an open breaker (the caller says so) skips the slot
    if_running     the schedule's previous job still queued or running:
                     skip    record the slot as seen, do not run (the default)
                     queue   run it anyway; it waits for the plugin's capacity
                     cancel  cancel the previous job, then run

A skipped slot is still recorded, so it never runs later by surprise.
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
from ductile.config.rules import weekday_number
from ductile.config.units import parse_instant
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


def host_zone_name() -> str:
    """The host's zone as a person reads it: ``$TZ``, else what /etc/localtime links to."""
    zone = host_zone()
    key = getattr(zone, "key", None)
    if key and key != "localtime":
        return str(key)
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        return "UTC"
    marker = "/zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else ("UTC" if zone is timezone.utc else "localtime")


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
    at: float | None = None                 # one-shot: this instant
    after: float | None = None              # one-shot: this long after first seen
    catch_up: str = "run_once"              # skip | run_once | run_all
    if_running: str = "skip"                # skip | queue | cancel
    window: tuple[int, int] | None = None   # only_between, minutes since local midnight [start, end)
    not_on: frozenset[int] = frozenset()    # weekdays, 0 = Sunday

    @property
    def one_shot(self) -> bool:
        return self.at is not None or self.after is not None


def _fingerprint(every: float | None, cron: str | None, command: str, zone: str | None = None,
                 at: str | None = None, after: float | None = None) -> str:
    text = f"every={every!r} cron={cron!r} command={command}" + (f" timezone={zone}" if zone else "")
    text += (f" at={at}" if at else "") + (f" after={after!r}" if after is not None else "")
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_window(text: str | None) -> tuple[int, int] | None:
    """``08:00-18:00`` -> (480, 1080): minutes since midnight, end excluded."""
    if not text:
        return None
    start, end = text.split("-", 1)
    return tuple(int(h) * 60 + int(m) for h, m in (start.split(":"), end.split(":")))  # type: ignore[return-value]


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
            sid = f"{name}#{i}:{_fingerprint(sc.every, sc.cron, sc.command, sc.timezone, sc.at, sc.after)}"
            zone = ZoneInfo(sc.timezone) if sc.timezone else host_zone()  # validated by the config decoder
            out.append(Schedule(sid, where, name, sc.command, sc.every, sc.cron, sc.jitter, pc.retry.max_attempts,
                                dict(sc.payload), sc.timezone, zone, at=parse_instant(sc.at) if sc.at else None,
                                after=sc.after, catch_up=sc.catch_up, if_running=sc.if_running,
                                window=parse_window(sc.only_between),
                                not_on=frozenset(weekday_number(d) for d in sc.not_on)))
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


MISSED_AFTER = 60.0   # seconds: a slot seen later than this after its time was missed (downtime)
CATCH_UP_MAX = 24     # catch_up: run_all runs at most this many missed slots (the latest)


@dataclass(frozen=True)
class Memory:
    """What the state database remembers of one schedule."""

    last_slot: float | None
    created_at: float | None = None  # when a gateway first saw it (``after:``)


@dataclass(frozen=True)
class Decision:
    """``plan``'s answer. ``slots``: to fire, oldest first (fire); the slot to record as seen
    (skip, baseline). ``reason``: why a skip."""

    action: Literal["fire", "skip", "baseline", "wait"]
    slots: tuple[float, ...] = ()
    reason: str = ""
    cancel_previous: bool = False


def allowed_at(schedule: Schedule, slot: float) -> str | None:
    """None when ``slot`` passes only_between and not_on, else why not."""
    if schedule.window is None and not schedule.not_on:
        return None
    wall = _wall(slot, schedule.zone)
    if wall.isoweekday() % 7 in schedule.not_on:
        return f"not_on {wall.strftime('%a').lower()}"
    if schedule.window is not None:
        start, end = schedule.window
        minute = wall.hour * 60 + wall.minute
        inside = start <= minute < end if start < end else (minute >= start or minute < end)
        if not inside:
            return f"{wall.strftime('%H:%M')} is outside only_between {start // 60:02d}:{start % 60:02d}-" \
                   f"{end // 60:02d}:{end % 60:02d}"
    return None


def _missed_slots(schedule: Schedule, last: float, slot: float) -> list[float]:
    """Every slot in (last, slot], oldest first, at most CATCH_UP_MAX (the latest)."""
    out = [slot]
    probe = slot
    while len(out) < CATCH_UP_MAX:
        probe = latest_slot(schedule, probe - 0.001)
        if probe <= last or probe >= out[-1]:
            break
        out.append(probe)
    return sorted(out)


def _due(schedule: Schedule, memory: Memory | None, now: float) -> Decision:
    """Which slots are due, before the policies that may skip them."""
    last = memory.last_slot if memory is not None else None
    if schedule.one_shot:
        if schedule.after is not None:
            if memory is None:
                return Decision("baseline", (0.0,))  # nothing fired yet; created_at starts the count
            target = (memory.created_at if memory.created_at is not None else now) + schedule.after
        else:
            assert schedule.at is not None
            target = schedule.at
        if (last is not None and last >= target) or now < target:
            return Decision("wait")
        slots: tuple[float, ...] = (target,)
    else:
        action, slot = decide(schedule, last, now)
        if action != "fire":
            return Decision(action, (slot,))
        slots = tuple(_missed_slots(schedule, last, slot)) if last is not None and schedule.catch_up == "run_all" \
            else (slot,)
    # a recurring schedule seen for the first time is not late: its interval starts now
    if schedule.catch_up == "skip" and (schedule.one_shot or last is not None) and now - slots[-1] > MISSED_AFTER:
        return Decision("skip", (slots[-1],), "missed while the gateway was down or busy (catch_up: skip)")
    return Decision("fire", slots)


def plan(schedule: Schedule, memory: Memory | None, now: float, *, outstanding: bool = False,
         blocked: str | None = None) -> Decision:
    """What to do with ``schedule`` at ``now`` (see the module doc). ``outstanding``: its
    previous job is still queued or running. ``blocked``: why its plugin's scheduled runs
    are paused (an open breaker), or None."""
    due = _due(schedule, memory, now)
    if due.action != "fire":
        return due
    slots = tuple(t for t in due.slots if allowed_at(schedule, t) is None)
    latest = due.slots[-1]
    if not slots:
        return Decision("skip", (latest,), str(allowed_at(schedule, latest)))
    if blocked is not None:
        return Decision("skip", (latest,), blocked)
    if outstanding:
        if schedule.if_running == "skip":
            return Decision("skip", (latest,), "the previous run is still queued or running (if_running: skip)")
        if schedule.if_running == "cancel":
            return Decision("fire", slots, cancel_previous=True)
    return Decision("fire", slots)
