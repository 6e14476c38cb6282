"""Cron in a real zone, across both daylight-saving changes, with a simulated clock.

The policy (ductile.serve.ticks): a skipped local time runs once, at the change; a
repeated local time runs once, at its first occurrence. The tables drive the scheduler's
own decision function every minute through each change day and list every run."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ductile.config import load_config
from ductile.errors import ConfigError
from ductile.serve import ticks
from ductile.serve.ticks import Schedule, decide, instant, schedules_of

BERLIN = ZoneInfo("Europe/Berlin")
SPRING = (datetime(2025, 3, 29, 20, tzinfo=timezone.utc), datetime(2025, 3, 31, 3, tzinfo=timezone.utc))
AUTUMN = (datetime(2025, 10, 25, 20, tzinfo=timezone.utc), datetime(2025, 10, 27, 3, tzinfo=timezone.utc))


def runs(expr: str, span: tuple[datetime, datetime], zone: ZoneInfo = BERLIN, step: float = 60.0) -> list[str]:
    """Every slot the scheduler fires for ``expr`` while the clock walks through ``span``."""
    s = Schedule("s", "plugins.p.schedules[0]", "p", "poll", None, expr, 0.0, 1, {}, zone.key, zone)
    last: float | None = None
    fired: list[str] = []
    now, end = span[0].timestamp(), span[1].timestamp()
    while now < end:
        action, slot = decide(s, last, now)
        if action == "fire":
            fired.append(datetime.fromtimestamp(slot, timezone.utc).strftime("%m-%d %H:%MZ"))
        if action != "wait":
            last = slot
        now += step
    return fired


@pytest.mark.parametrize("expr,expected", [
    # 02:00-03:00 does not exist on 30 March: 02:30 runs once at the change (03:00 CEST = 01:00Z)
    ("30 2 * * *", ["03-30 01:00Z", "03-31 00:30Z"]),
    ("0 2 * * *", ["03-30 01:00Z", "03-31 00:00Z"]),
    ("*/15 2 * * *", ["03-30 01:00Z", "03-31 00:00Z", "03-31 00:15Z", "03-31 00:30Z", "03-31 00:45Z"]),
    ("30 3 * * *", ["03-30 01:30Z", "03-31 01:30Z"]),   # after the gap: unaffected
    ("15 1 * * *", ["03-30 00:15Z", "03-30 23:15Z"]),
])
def test_spring_forward_a_skipped_time_runs_once_at_the_change(expr: str, expected: list[str]) -> None:
    assert runs(expr, SPRING) == expected


@pytest.mark.parametrize("expr,expected", [
    # 02:00-03:00 happens twice on 26 October: 02:30 runs at its first occurrence only
    ("30 2 * * *", ["10-26 00:30Z", "10-27 01:30Z"]),
    ("0 2 * * *", ["10-26 00:00Z", "10-27 01:00Z"]),
    ("30 3 * * *", ["10-26 02:30Z", "10-27 02:30Z"]),   # once, not three times
    ("15 1 * * *", ["10-25 23:15Z", "10-27 00:15Z"]),   # once, not twice
])
def test_fall_back_a_repeated_time_runs_once(expr: str, expected: list[str]) -> None:
    assert runs(expr, AUTUMN) == expected


@pytest.mark.parametrize("day,start,end,count", [
    # local midnight to midnight; the clock starts a second early so 00:00 itself fires
    ("spring", datetime(2025, 3, 29, 22, 59, 59, tzinfo=timezone.utc),
     datetime(2025, 3, 30, 22, tzinfo=timezone.utc), 46),
    ("autumn", datetime(2025, 10, 25, 21, 59, 59, tzinfo=timezone.utc),
     datetime(2025, 10, 26, 23, tzinfo=timezone.utc), 48),
])
def test_every_half_hour_across_a_whole_change_day(day: str, start: datetime, end: datetime, count: int) -> None:
    # spring: 48 half-hours, 02:00 and 02:30 do not exist; they run at the change, which is the
    # 03:00 run itself (one run per instant): 46. autumn: 02:00 and 02:30 twice, run once: 48
    fired = runs("*/30 * * * *", (start, end))
    assert len(fired) == len(set(fired)) == count, fired


def test_the_instant_of_a_wall_time_never_goes_backwards() -> None:
    day = datetime(2025, 10, 26)
    walls = [day.replace(hour=h, minute=m) for h in range(0, 5) for m in range(0, 60, 5)]
    instants = [instant(w, BERLIN) for w in walls]
    assert instants == sorted(instants)
    spring = [instant(datetime(2025, 3, 30, h, m), BERLIN) for h in range(0, 5) for m in range(0, 60, 5)]
    assert spring == sorted(spring)


def test_a_schedule_reads_its_own_zone_and_the_host_zone_by_default(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "config.yaml").write_text(textwrap.dedent("""\
        plugin_roots: [plugins]
        plugins:
          p:
            schedules:
              - {cron: "0 7 * * *", timezone: America/New_York}
              - {cron: "0 7 * * *"}
        """))
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    ticks.host_zone.cache_clear()
    try:
        ny, host = schedules_of(load_config(str(tmp_path)).config)
    finally:
        ticks.host_zone.cache_clear()
    assert ny.zone == ZoneInfo("America/New_York") and host.zone == ZoneInfo("Asia/Tokyo")
    assert ny.id != host.id  # a changed zone is a new schedule, not an old slot memory
    now = datetime(2026, 7, 1, 12, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(ticks.next_slot(ny, now), timezone.utc).hour == 11   # 07:00 EDT
    assert datetime.fromtimestamp(ticks.next_slot(host, now), timezone.utc).hour == 22  # 07:00 JST


@pytest.mark.parametrize("value", ["Mars/Olympus", "../../etc/passwd", "Europe/", "", "UTC+2"])
def test_an_unknown_zone_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "config.yaml").write_text(f'plugin_roots: [plugins]\nplugins:\n  p:\n    schedules: '
                                          f'[{{cron: "0 7 * * *", timezone: "{value}"}}]\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    line = info.value.one_line()
    assert "plugins.p.schedules[0].timezone" in line and "Europe/Berlin" in line, line
