"""serve's pure decisions as tables: settling outcomes, routing events, schedule slots,
token scopes, webhook signatures; and its small OS edges (sd_notify, the instance lock,
the log redactor)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from datetime import datetime
from pathlib import Path

import pytest

from ductile.config.model import Config, PipelineConfig, PipelineOn, PipelineStep, PluginConfig, RetryConfig, ServiceConfig
from ductile.errors import (
    AccountDropFailed,
    BootRefused,
    FingerprintMismatch,
    JobCancelled,
    NoDowngradeTarget,
    PluginError,
    PluginFailed,
    PluginTimeout,
    ProtocolError,
    SpawnFailed,
    VaultPrincipalRequired,
)
from ductile.plugins.protocol import Response
from ductile.runtime.outcome import Outcome
from ductile.serve import logs, notify
from ductile.state.instance import InstanceLock
from ductile.serve.pipelines import matches, route, starts
from ductile.serve.scopes import Principal, TokenTable, bearer
from ductile.serve.settle import settle
from ductile.serve.signatures import sign, verify
from ductile.serve.ticks import Schedule, decide, latest_slot, next_slot
from ductile.state.jobs import Failed, Retry, Succeeded, TimedOut

RETRY = RetryConfig(max_attempts=3, backoff_base=10, backoff_max=100)
NOW = 1_000_000.0


def _failed(err: Exception, terminal: bool, exit_code: int | None = 1) -> Outcome:
    return Outcome("failed", terminal, None, err, exit_code)  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome,attempt,expected", [
    (Outcome("succeeded", False, Response("ok", result={"a": 1}), None, 0), 1, Succeeded({"a": 1})),
    (_failed(ProtocolError("not JSON"), False), 1, Retry("not JSON", NOW + 10)),
    (_failed(ProtocolError("not JSON"), False), 2, Retry("not JSON", NOW + 20)),
    (_failed(PluginFailed("boom", terminal=True), True, 78), 1, Failed("boom", "exit_code_78")),
    (_failed(PluginFailed("no", terminal=True), True, 0), 1, Failed("no", "plugin_retry_false")),
    (_failed(AccountDropFailed("refused"), True, None), 1, Failed("refused", "drop_failed")),
    (_failed(NoDowngradeTarget("changed"), True, None), 1, Failed("changed", "no_downgrade_target")),
    (_failed(VaultPrincipalRequired("unknown"), True, None), 1, Failed("unknown", "vault_required")),
    (_failed(SpawnFailed("gone"), True, None), 1, Failed("gone", "spawn_failed")),
    (_failed(FingerprintMismatch("drifted"), True, None), 1, Failed("drifted", "fingerprint_mismatch")),
    (_failed(PluginError("not configured"), True, None), 1, Failed("not configured", "plugin_unavailable")),
    (Outcome("timed_out", False, None, PluginTimeout("slow"), -9), 1, TimedOut("slow", NOW + 10)),
    (Outcome("timed_out", False, None, PluginTimeout("slow"), -9), 3, TimedOut("slow", None)),
    (_failed(JobCancelled("shutdown"), False, -9), 1, None),
])
def test_settle_table(outcome: Outcome, attempt: int, expected: object) -> None:
    assert settle(outcome, attempt=attempt, max_attempts=3, retry=RETRY, now=NOW, rand=0.0) == expected


def test_settle_adds_jitter_within_a_quarter_of_the_base() -> None:
    got = settle(_failed(ProtocolError("x"), False), attempt=1, max_attempts=3, retry=RETRY, now=NOW, rand=1.0)
    assert isinstance(got, Retry) and got.next_attempt_at == NOW + 10 + 2.5


@pytest.mark.parametrize("pattern,event,hit", [
    ("echo.done", "echo.done", True), ("echo.done", "echo.done2", False), ("echo.*", "echo.done", True),
    ("echo.*", "echo.a.b", True), ("echo.*", "echo", False), ("echo.*", "echo.", False), ("echo.*", "echoes.x", False),
])
def test_pipeline_matching(pattern: str, event: str, hit: bool) -> None:
    assert matches(pattern, event) is hit


def _routing_config(max_depth: int = 2) -> Config:
    return Config(service=ServiceConfig(max_event_depth=max_depth),
                  plugins={"echo": PluginConfig(), "notify": PluginConfig(retry=RetryConfig(max_attempts=7))},
                  pipelines=(PipelineConfig("a", PipelineOn("echo.*"), (PipelineStep("notify"), PipelineStep("echo", "poll"))),
                             PipelineConfig("b", PipelineOn("other"), (PipelineStep("notify"),))))


def test_route_makes_one_job_per_step_one_hop_deeper() -> None:
    jobs, stopped = route(_routing_config(), event_id="e1", event_type="echo.done", payload={"k": 1},
                          source_job_id="j1", source_plugin="echo", source_depth=0)
    assert stopped == []
    assert [(d.plugin, d.command, d.depth, d.max_attempts) for d in jobs] == [("notify", "handle", 1, 7),
                                                                              ("echo", "poll", 1, 4)]
    assert jobs[0].event == {"id": "e1", "type": "echo.done", "payload": {"k": 1}, "source_job_id": "j1",
                             "source_plugin": "echo", "pipeline": "a", "depth": 1,
                             "event_id": "e1", "source": "echo", "dedupe_key": None}


SOURCE_TABLE = [
    # (on.event, on.from, event type, source plugin, starts?)
    ("lowly.done", (), "lowly.done", "lowly", True),
    ("lowly.done", (), "lowly.done", "evil", True),           # the short form trusts every source
    ("lowly.done", ("lowly",), "lowly.done", "lowly", True),
    ("lowly.done", ("lowly",), "lowly.done", "evil", False),  # spoofed: same type, other plugin
    ("lowly.done", ("lowly",), "lowly.done", None, False),
    ("lowly.done", ("a", "lowly"), "lowly.done", "lowly", True),
    ("lowly.*", ("lowly",), "lowly.x.y", "lowly", True),
    ("lowly.*", ("lowly",), "lowly.x.y", "evil", False),
    ("lowly.done", ("lowly",), "lowly.other", "lowly", False),
]


@pytest.mark.parametrize(("event", "sources", "etype", "source", "hit"), SOURCE_TABLE)
def test_a_pipeline_bound_to_sources_starts_only_on_their_events(event: str, sources: tuple[str, ...], etype: str,
                                                                  source: str | None, hit: bool) -> None:
    assert starts(PipelineOn(event, sources), etype, source) is hit


def test_route_stops_a_chain_past_max_event_depth_and_says_why() -> None:
    jobs, stopped = route(_routing_config(2), event_id="e", event_type="echo.done", payload=[1], source_job_id="j",
                          source_plugin="echo", source_depth=2)
    assert jobs == [] and len(stopped) == 2
    assert "max_event_depth 2" in stopped[0].as_payload()["why"]


def _sched(every: float | None = None, cron: str | None = None) -> Schedule:
    return Schedule("s", "plugins.p.schedules[0]", "p", "poll", every, cron, 0.0, 1)


@pytest.mark.parametrize("last,now,expected", [
    (None, 1005.0, ("fire", 1000.0)),       # an interval starts now
    (1000.0, 1005.0, ("wait", 1000.0)),     # this slot already fired
    (1000.0, 1010.0, ("fire", 1010.0)),     # the next slot
    (1000.0, 5000.0, ("fire", 5000.0)),     # downtime: one run for the latest slot, not 400
    (5000.0, 1010.0, ("wait", 1010.0)),     # a clock stepping back never refires
])
def test_every_slots(last: float | None, now: float, expected: tuple[str, float]) -> None:
    assert decide(_sched(every=10), last, now) == expected


def test_cron_slots_first_seen_waits_for_the_next_match() -> None:
    seven = datetime(2026, 3, 2, 7, 0, 0).timestamp()
    s = _sched(cron="0 7 * * *")
    assert decide(s, None, seven + 30) == ("baseline", seven)
    assert decide(s, seven, seven + 3600) == ("wait", seven)
    assert decide(s, seven, seven + 3 * 86400 + 5) == ("fire", seven + 3 * 86400)  # three missed days: one run
    assert latest_slot(s, seven) == seven and next_slot(s, seven) == seven + 86400


def test_scopes_table() -> None:
    star, ro, rw = Principal("a", ("*",)), Principal("b", ("echo:ro",)), Principal("c", ("echo:rw", "x:ro"))
    assert star.can_run("any", "write") and star.readable() is None
    assert ro.can_run("echo", "read") and not ro.can_run("echo", "write") and not ro.can_read("x")
    assert rw.can_run("echo", "write") and rw.can_run("x", "read") and not rw.can_run("x", "write")
    assert rw.readable() == frozenset({"echo", "x"})


def test_token_table_finds_by_value_and_keeps_no_values() -> None:
    table = TokenTable([("ops", "secret-one", ("*",)), ("viewer", "secret-two", ("echo:ro",))])
    assert table.authenticate("secret-two") == Principal("viewer", ("echo:ro",))
    assert table.authenticate("secret-tw") is None and table.authenticate("") is None
    assert "secret-one" not in repr(table.__dict__)


@pytest.mark.parametrize("header,token", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
                                          ("Bearer", None), (None, None), ("", None)])
def test_bearer_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_signatures() -> None:
    key, body = b"k" * 32, b'{"a": 1}'
    good = sign(key, body)
    assert verify(key, body, good) and verify(key, body, "sha256=" + good) and verify(key, body, "SHA256=" + good.upper())
    assert not verify(key, body + b" ", good) and not verify(b"other", body, good)
    for bad in (None, "", "sha256=", "sha1=" + good, good[:-1], "sha256=" + "g" * 64):
        assert not verify(key, body, bad)
    assert not verify(b"", body, sign(b"", body))  # an empty key would sign for anyone


def test_sd_notify_datagram_reaches_an_abstract_socket() -> None:
    name = f"ductile-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        assert notify.notify("READY=1", "STATUS=serving\nok", env={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(1024) == b"READY=1\nSTATUS=serving ok"
    assert not notify.notify("READY=1", env={})
    assert not notify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name + "-nobody-listens"})


def test_instance_lock_refuses_a_second_holder_in_one_line(tmp_path: Path) -> None:
    first = InstanceLock.for_state(str(tmp_path / "state" / "d.db")).acquire()
    try:
        with pytest.raises(BootRefused) as err:
            InstanceLock.for_state(str(tmp_path / "state" / "d.db")).acquire()
        assert f"pid {os.getpid()}" in err.value.one_line() and "\n" not in err.value.one_line()
        assert oct((tmp_path / "state" / "d.db.lock").stat().st_mode & 0o777) == "0o600"
    finally:
        first.release()
    InstanceLock.for_state(str(tmp_path / "state" / "d.db")).acquire().release()


def test_redactor_masks_secret_values_in_messages_fields_and_tracebacks() -> None:
    stream = io.StringIO()
    redactor = logs.setup("debug", stream=stream, tty=False)
    redactor.add(["s3cret-value-123", "ab"])  # too short to mask safely: ignored
    log = logging.getLogger("ductile.test")
    logs.log(log, logging.INFO, "token s3cret-value-123 seen", header="Bearer s3cret-value-123", n=1)
    try:
        raise ValueError("boom s3cret-value-123")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert "s3cret-value-123" not in text and text.count(logs.REDACTED) >= 3
    first = json.loads(text.splitlines()[0])
    assert first["header"] == f"Bearer {logs.REDACTED}" and first["n"] == 1 and first["level"] == "info"
    logging.getLogger().handlers.clear()


def test_scheduler_runs_a_missed_slot_once_and_never_repeats_one(tmp_path: Path) -> None:
    from ductile.serve.scheduler import Scheduler
    from ductile.state import open_state

    now = [1005.0]
    # if_running: queue — nothing runs the queued jobs here, and the default (skip) would
    # rightly skip a slot whose previous job is still waiting
    every = Schedule("p#0:x", "plugins.p.schedules[0]", "p", "poll", 10.0, None, 0.0, 2, {"k": 1}, if_running="queue")
    cron = Schedule("p#1:y", "plugins.p.schedules[1]", "p", "poll", None, "* * * * *", 0.0, 2)
    woken: list[int] = []
    with open_state(str(tmp_path / "s.db")) as db:
        sched = Scheduler(db, [every, cron], on_enqueue=lambda: woken.append(1), clock=lambda: now[0])
        assert sched.tick() == 1                  # every: fires at once; cron: baseline only
        assert sched.tick() == 0                  # same slot: nothing
        now[0] = 1009.9
        assert sched.tick() == 0
        now[0] = 1000.0 + 3600 * 5                # five hours down
        assert sched.tick() == 2                  # one run per schedule, not 360 + 300
        again = Scheduler(db, [every, cron], on_enqueue=lambda: None, clock=lambda: now[0])
        assert again.tick() == 0                  # a restart in the same slot repeats nothing
        jobs = db.jobs.list_jobs(limit=100)
        assert len(jobs) == 3 and all(j.max_attempts == 2 for j in jobs)
        assert {json.dumps(j.payload) for j in jobs} == {'{"k": 1}', "{}"}
        assert len(woken) == 2


def test_terminal_logs_are_readable_lines_without_repeating_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = io.StringIO()
    logs.setup("info", stream=stream, tty=True)
    logs.log(logging.getLogger("ductile.test"), logging.INFO, "posture=enforce cell=x", posture="enforce", job_id="j1")
    text = stream.getvalue()
    logging.getLogger().handlers.clear()
    assert "posture=enforce cell=x" in text and "job_id=j1" in text
    assert text.count("posture=enforce") == 1 and not text.lstrip().startswith("{")


def test_an_unexpected_api_exception_is_one_json_500_and_one_log_line() -> None:
    import asyncio

    from ductile.serve.api import CatchAll

    async def boom(scope, receive, send):  # type: ignore[no-untyped-def]
        raise RuntimeError("kaput")

    sent: list[dict] = []  # type: ignore[type-arg]

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    stream = io.StringIO()
    logs.setup("info", stream=stream, tty=False)
    asyncio.run(CatchAll(boom)({"type": "http", "method": "GET", "path": "/x", "headers": []}, receive, send))
    logging.getLogger().handlers.clear()
    assert sent[0]["status"] == 500 and json.loads(sent[1]["body"])["fix"]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "RuntimeError: kaput" in lines[0] and "Traceback" not in lines[0]
