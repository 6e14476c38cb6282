"""Serve operations as tables: schedule policies (DST included), the breaker's transitions,
what a reload must refuse, lifecycle payloads, time filters, retention by age, and the
scheduler carrying out catch_up against a real state database with a fake clock."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ductile.config.model import Config
from ductile.config.units import parse_instant, parse_when
from ductile.serve.ticks import CATCH_UP_MAX, MISSED_AFTER, Decision, Memory, Schedule, allowed_at, parse_window, plan
from ductile.state.breakers import Breaker, after_run, gate, opened, trying

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def sched(every: float | None = 3600.0, cron: str | None = None, zone: ZoneInfo = UTC, **kw: object) -> Schedule:
    return Schedule("s", "plugins.p.schedules[0]", "p", "poll", every, cron, 0.0, 1, {}, zone.key, zone, **kw)  # type: ignore[arg-type]


def t(text: str) -> float:
    return parse_instant(text)


# -- catch_up --------------------------------------------------------------------------

DOWN_FROM, BACK_AT = t("2026-05-04T10:00:00Z"), t("2026-05-04T12:10:00Z")  # hourly; 11:00 and 12:00 missed


@pytest.mark.parametrize("catch_up,expected", [
    ("run_once", Decision("fire", (t("2026-05-04T12:00:00Z"),))),
    ("run_all", Decision("fire", (t("2026-05-04T11:00:00Z"), t("2026-05-04T12:00:00Z")))),
    ("skip", Decision("skip", (t("2026-05-04T12:00:00Z"),),
                      "missed while the gateway was down or busy (catch_up: skip)")),
])
def test_catch_up_after_downtime(catch_up: str, expected: Decision) -> None:
    assert plan(sched(catch_up=catch_up), Memory(DOWN_FROM), BACK_AT) == expected


def test_catch_up_skip_still_runs_a_slot_seen_on_time() -> None:
    on_time = t("2026-05-04T12:00:00Z") + MISSED_AFTER / 2
    assert plan(sched(catch_up="skip"), Memory(DOWN_FROM), on_time).action == "fire"


def test_run_all_is_bounded_to_the_latest_slots() -> None:
    d = plan(sched(every=60.0, catch_up="run_all"), Memory(0.0), 86400.0 * 3)
    assert len(d.slots) == CATCH_UP_MAX and d.slots[-1] == 86400.0 * 3 and d.slots == tuple(sorted(d.slots))


def test_run_all_across_a_spring_change_counts_the_skipped_time_once() -> None:
    # 02:30 Berlin does not exist on 29 March 2026: the daily run happens once, at the change
    s = sched(None, "30 2 * * *", BERLIN, catch_up="run_all")
    last = datetime(2026, 3, 27, 2, 30, tzinfo=BERLIN).timestamp()
    d = plan(s, Memory(last), datetime(2026, 3, 30, 12, 0, tzinfo=BERLIN).timestamp())
    local = [datetime.fromtimestamp(x, BERLIN).strftime("%m-%d %H:%M") for x in d.slots]
    assert local == ["03-28 02:30", "03-29 03:00", "03-30 02:30"]


# -- only_between and not_on, on the schedule's wall clock ----------------------------

@pytest.mark.parametrize("window,local,ok", [
    ("08:00-18:00", "2026-05-04T08:00", True),
    ("08:00-18:00", "2026-05-04T17:59", True),
    ("08:00-18:00", "2026-05-04T18:00", False),   # the end is not included
    ("08:00-18:00", "2026-05-04T07:59", False),
    ("22:00-06:00", "2026-05-04T23:30", True),    # wraps midnight
    ("22:00-06:00", "2026-05-04T05:59", True),
    ("22:00-06:00", "2026-05-04T12:00", False),
])
def test_only_between(window: str, local: str, ok: bool) -> None:
    s = sched(window=parse_window(window), zone=BERLIN)
    slot = datetime.fromisoformat(local).replace(tzinfo=BERLIN).timestamp()
    assert (allowed_at(s, slot) is None) is ok


@pytest.mark.parametrize("not_on,local,ok", [
    (frozenset({6, 0}), "2026-05-09T10:00", False),  # a Saturday
    (frozenset({6, 0}), "2026-05-10T10:00", False),  # a Sunday
    (frozenset({6, 0}), "2026-05-11T10:00", True),   # a Monday
])
def test_not_on(not_on: frozenset[int], local: str, ok: bool) -> None:
    s = sched(not_on=not_on, zone=BERLIN)
    assert (allowed_at(s, datetime.fromisoformat(local).replace(tzinfo=BERLIN).timestamp()) is None) is ok


@pytest.mark.parametrize("span,expected", [
    # spring: 02:00-03:00 does not exist; hourly runs in a 01:00-04:00 window are 01:00 and 03:00 only
    (("2026-03-29T00:30:00+01:00", "2026-03-29T05:00:00+02:00"), ["01:00+01:00", "03:00+02:00"]),
    # autumn: 02:00-03:00 happens twice; both are inside the window on the wall clock
    (("2026-10-25T00:30:00+02:00", "2026-10-25T05:00:00+01:00"), ["01:00+02:00", "02:00+02:00", "02:00+01:00",
                                                                   "03:00+01:00"]),
])
def test_a_window_across_dst_changes_reads_the_wall_clock(span: tuple[str, str], expected: list[str]) -> None:
    s = sched(every=3600.0, zone=BERLIN, window=parse_window("01:00-04:00"))
    last: float | None = None
    fired = []
    now, end = t(span[0]), t(span[1])
    while now < end:
        d = plan(s, None if last is None else Memory(last), now)
        if d.action == "fire":
            fired += [datetime.fromtimestamp(x, BERLIN).strftime("%H:%M%z")[:-2] + ":00" for x in d.slots]
        if d.action in ("fire", "skip", "baseline"):
            last = d.slots[-1]
        now += 60
    assert fired == expected


# -- if_running and the breaker's block ----------------------------------------------

@pytest.mark.parametrize("if_running,action,cancel", [("skip", "skip", False), ("queue", "fire", False),
                                                      ("cancel", "fire", True)])
def test_if_running(if_running: str, action: str, cancel: bool) -> None:
    d = plan(sched(if_running=if_running), Memory(0.0), 3600.0 + 1, outstanding=True)
    assert (d.action, d.cancel_previous) == (action, cancel)


def test_a_blocked_plugin_skips_and_says_why() -> None:
    d = plan(sched(), Memory(0.0), 3601.0, blocked="breaker open")
    assert d == Decision("skip", (3600.0,), "breaker open")


# -- one-shots -----------------------------------------------------------------------

AT = t("2026-05-04T09:30:00+02:00")


@pytest.mark.parametrize("memory,now,catch_up,expected", [
    (None, AT - 10, "run_once", Decision("wait")),
    (None, AT + 1, "run_once", Decision("fire", (AT,))),
    (Memory(AT), AT + 3600, "run_once", Decision("wait")),                    # never twice
    (None, AT + 86400, "run_once", Decision("fire", (AT,))),                 # missed while down: once
    (None, AT + 86400, "skip", Decision("skip", (AT,), "missed while the gateway was down or busy (catch_up: skip)")),
])
def test_at(memory: Memory | None, now: float, catch_up: str, expected: Decision) -> None:
    assert plan(sched(None, None, at=AT, catch_up=catch_up), memory, now) == expected


def test_after_counts_from_when_a_gateway_first_saw_it() -> None:
    s = sched(None, None, after=600.0)
    assert plan(s, None, 1000.0) == Decision("baseline", (0.0,))
    seen = Memory(0.0, created_at=1000.0)
    assert plan(s, seen, 1500.0).action == "wait"
    assert plan(s, seen, 1600.0) == Decision("fire", (1600.0,))
    assert plan(s, Memory(1600.0, created_at=1000.0), 9999.0).action == "wait"


# -- the breaker -----------------------------------------------------------------------

@pytest.mark.parametrize("before,ok,expected_state,expected_failures", [
    (None, True, "closed", 0),
    (None, False, "closed", 1),
    (Breaker("p", "closed", 1), False, "open", 2),            # threshold 2 reached
    (Breaker("p", "closed", 1), True, "closed", 0),
    (Breaker("p", "half_open", 2, 0.0, 10.0), True, "closed", 0),
    (Breaker("p", "half_open", 2, 0.0, 10.0), False, "open", 3),
])
def test_breaker_after_a_scheduled_run(before: Breaker | None, ok: bool, expected_state: str,
                                       expected_failures: int) -> None:
    after = after_run(before, "p", ok=ok, error="boom", threshold=2, reset_after=30.0, now=100.0)
    assert (after.state, after.failures) == (expected_state, expected_failures)
    if after.state == "open":
        assert after.retry_at == 130.0 and after.opened_at == 100.0 and opened(before, after)


def test_breaker_threshold_zero_never_opens() -> None:
    b = None
    for _ in range(10):
        b = after_run(b, "p", ok=False, error="x", threshold=0, reset_after=1.0, now=0.0)
    assert b is not None and b.state == "closed"


@pytest.mark.parametrize("b,now,blocked,try_", [
    (None, 0.0, False, False),
    (Breaker("p", "open", 3, 0.0, 100.0), 50.0, True, False),
    (Breaker("p", "open", 3, 0.0, 100.0), 100.0, False, True),     # the half-open try
    (Breaker("p", "half_open", 3, 0.0, 100.0), 150.0, True, False),  # while the try runs
])
def test_breaker_gate(b: Breaker | None, now: float, blocked: bool, try_: bool) -> None:
    why, trying_now = gate(b, now)
    assert (why is not None, trying_now) == (blocked, try_)
    if trying_now:
        assert b is not None and trying(b).state == "half_open"


# -- reload: what needs a restart ------------------------------------------------------

def _with(config: Config, dotted: str, value: object) -> Config:
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with(getattr(config, head), rest, value)})  # type: ignore[arg-type]


@pytest.mark.parametrize("setting,value,restart", [
    ("api.listen", "127.0.0.1:9999", True),
    ("state.path", "/elsewhere/ductile.db", True),
    ("service.max_workers", 7, True),
    ("accounts", {"default": object()}, True),
    ("api.enabled", False, True),
    ("service.containment", "sweep", True),
    ("api.tokens", (), False),
    ("plugins", {}, False),
    ("pipelines", (), False),
    ("webhooks", (), False),
    ("service.dedupe_ttl", 60.0, False),
    ("service.log_level", "debug", False),
])
def test_restart_needed(setting: str, value: object, restart: bool) -> None:
    from ductile.serve.reload import restart_needed

    old = Config()
    changes = restart_needed(old, _with(old, setting, value))
    assert bool(changes) is restart
    if restart:
        assert changes[0].setting == setting and changes[0].why


# -- lifecycle events ------------------------------------------------------------------

def _queued(**kw: object):  # type: ignore[no-untyped-def]
    from ductile.state.jobs import Job

    base = dict(id="j1", plugin="p", command="poll", status="running", attempt=2, max_attempts=2, next_attempt_at=0.0,
                created_at=0.0, updated_at=0.0, started_at=0.0, finished_at=None, dedupe_key=None, parent_job_id=None,
                event_depth=0, account=None, uid=None, last_error=None, trigger="schedule",
                payload={"password": "hunter2"}, event=None, result=None, stderr_tail="token=abc")
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("status,decision,kind,reason", [
    ("dead", "retry", "job.dead", "attempts_exhausted"),
    ("failed", "failed", "job.failed", "exit_code_78"),
    ("timed_out", "timed_out", "job.timed_out", "timeout"),
    ("succeeded", "ok", None, None),
    ("queued", "retry", None, None),
    ("failed", "superseded", None, None),
])
def test_lifecycle_event(status: str, decision: str, kind: str | None, reason: str | None) -> None:
    from ductile.serve.record import lifecycle_event
    from ductile.state.jobs import Failed, Retry, Succeeded, TimedOut

    d = {"retry": Retry("boom", 0.0), "failed": Failed("misconfigured", "exit_code_78"),
         "timed_out": TimedOut("too slow"), "ok": Succeeded(1), "superseded": Failed("x", "superseded")}[decision]
    out = lifecycle_event(_queued(), status, d)
    if kind is None:
        assert out is None
        return
    assert out is not None and out[0] == kind and out[1]["reason"] == reason
    assert "hunter2" not in repr(out) and "token=abc" not in repr(out)


# -- --since / --until ---------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("2h", 10_000.0 - 7200),
    ("2026-05-04T10:00:00Z", t("2026-05-04T10:00:00Z")),
    ("2026-05-04T12:00:00+02:00", t("2026-05-04T10:00:00Z")),
])
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, 10_000.0) == expected


def test_parse_when_reads_a_bare_date_on_the_host_clock_and_refuses_words() -> None:
    assert parse_when("2026-05-04", 0.0) == datetime(2026, 5, 4).timestamp()
    with pytest.raises(ValueError, match="age"):
        parse_when("yesterday", 0.0)


# -- retention by age, against a real database -----------------------------------------

def test_retention_prunes_old_finished_rows_and_keeps_what_is_still_needed(tmp_path: Path) -> None:
    from ductile.state import open_state
    from ductile.state.retention import Retention, cutoffs
    from ductile.state.jobs import Succeeded

    now = time.time()
    old = now - 40 * 86400
    with open_state(str(tmp_path / "s.db")) as db:
        ids = {}
        for name in ("done", "queued", "recent"):
            ids[name] = db.jobs.enqueue("p", "poll", {}, max_attempts=1, now=old if name != "recent" else now)
        ev_kept = db.events.record_event("e.kept", {})
        ev_gone = db.events.record_event("e.gone", {})
        ids["child"] = db.jobs.enqueue("p", "handle", {}, max_attempts=1, event={"type": "e.kept"}, event_id=ev_kept,
                                       now=now)
        db.audit.record_audit("secret.set", "p", "test", "ok")
        for jid in (ids["done"],):
            claimed = db.jobs.claim(old + 1).job
            assert claimed is not None and claimed.id == jid
            db.jobs.finish(jid, Succeeded(), now=old + 2)
        with db.write() as conn:
            conn.execute("UPDATE events SET created_at = ?", (old,))
            conn.execute("UPDATE vault_audit SET at = ?", (old,))
            conn.execute("INSERT INTO dedupe_keys (key, job_id, expires_at) VALUES ('k1', ?, ?)", (ids["done"], now - 1))
        cut = cutoffs(30 * 86400.0, 30 * 86400.0, 30 * 86400.0, now)
        r = Retention(db, batch=1, pause=0.0, sleep=lambda _s: None)
        counted = r.count(cut)
        pruned = r.prune(cut)
        assert (pruned.jobs, pruned.events, pruned.audit, pruned.dedupe_keys) == (1, 1, 1, 1)
        assert (counted.jobs, counted.events, counted.audit, counted.dedupe_keys) == (1, 1, 1, 1)
        assert db.jobs.get(ids["done"]) is None and db.jobs.transitions(ids["done"]) == []
        assert db.jobs.get(ids["queued"]) is not None      # queued: never pruned, however old
        assert db.jobs.get(ids["recent"]) is not None
        assert [e.type for e in db.events.list_events()] == ["e.kept"]  # a kept job still needs it
        assert r.prune(cut).total == 0


def test_a_job_recovery_settles_dead_still_emits_job_dead(tmp_path: Path) -> None:
    from ductile.config.model import PipelineConfig, PipelineOn, PipelineStep, PluginConfig
    from ductile.serve.record import record_recovered
    from ductile.state import open_state

    config = Config(plugins={"p": PluginConfig(), "notify": PluginConfig()},
                    pipelines=(PipelineConfig("alert", PipelineOn("job.dead", ("p",)), (PipelineStep("notify"),)),))
    with open_state(str(tmp_path / "s.db")) as db:
        job_id = db.jobs.enqueue("p", "poll", {"secret_thing": "x"}, max_attempts=1, trigger="schedule",
                                 authority={"trigger": "schedule", "scopes": None})
        assert db.jobs.claim(time.time()).job is not None
        assert db.jobs.recover_after_crash() == [(job_id, "dead")]
        assert record_recovered(db, config, job_id) is True
        hooks = [j for j in db.jobs.list_jobs(plugin="notify")]
        assert len(hooks) == 1 and hooks[0].parent_job_id == job_id and hooks[0].event_depth == 1
        payload = hooks[0].event["payload"]
        assert payload["reason"] == "recovered_after_crash" and payload["job_id"] == job_id
        assert "secret_thing" not in repr(payload)
        assert record_recovered(db, config, hooks[0].id) is False  # not dead: nothing
