"""The rules that keep hostile input out, as tables: the JSON rule for every body, response
and payload ductile reads."""

from __future__ import annotations

import json

import pytest

from ductile import strictjson
from ductile.serve.bodies import BadBody, json_object
from ductile.serve.webhooks import delivery_payload

DEEP = "[" * 100_000 + "]" * 100_000

JSON_TABLE = [
    # (text, accepted value or the words of the refusal)
    ('{"a": 1}', {"a": 1}),
    ("[1, 2.5, -3e2, true, null]", [1, 2.5, -300.0, True, None]),
    ('{"n": ' + "9" * strictjson.MAX_INT_DIGITS + "}", {"n": int("9" * strictjson.MAX_INT_DIGITS)}),
    ('{"n": -' + "9" * strictjson.MAX_INT_DIGITS + "}", {"n": -int("9" * strictjson.MAX_INT_DIGITS)}),
    ('{"n": ' + "9" * (strictjson.MAX_INT_DIGITS + 1) + "}", "has 65 digits"),
    ('{"n": ' + "9" * 5000 + "}", "has 5000 digits"),
    ('{"n": NaN}', "NaN is not a JSON value"),
    ('{"n": Infinity}', "Infinity is not a JSON value"),
    ('{"n": -Infinity}', "-Infinity is not a JSON value"),
    ('{"n": 1e999}', "out of range"),
    ('{"n": -1e999}', "out of range"),
    ('{"n": 1' + "0" * 400 + '.0}', "out of range"),
    ("[" * strictjson.MAX_DEPTH + "]" * strictjson.MAX_DEPTH, None),  # None: accepted at exactly MAX_DEPTH
    ("[" * (strictjson.MAX_DEPTH + 1) + "]" * (strictjson.MAX_DEPTH + 1), "deeper than 128"),
    ('{"a":' * 900 + "1" + "}" * 900, "deeper than 128"),
    (DEEP, "deeper than 128"),
    ("[" * 100_000, "deeper than 128"),
]


@pytest.mark.parametrize(("text", "expect"), JSON_TABLE, ids=[str(i) for i in range(len(JSON_TABLE))])
def test_the_one_json_rule(text: str, expect: object) -> None:
    if isinstance(expect, str):
        with pytest.raises(strictjson.JsonRefused) as caught:
            strictjson.loads(text)
        assert expect in caught.value.reason and "\n" not in caught.value.reason
        return
    value = strictjson.loads(text)
    if expect is None:  # exactly MAX_DEPTH levels: accepted
        assert strictjson.depth(value) == strictjson.MAX_DEPTH
    else:
        assert value == expect


@pytest.mark.parametrize("text", ["", "{", "nope", '{"a": 1} x', "{'a': 1}"])
def test_text_that_is_not_json_is_told_apart_from_json_that_is_refused(text: str) -> None:
    with pytest.raises(strictjson.NotJson):
        strictjson.loads(text)


@pytest.mark.parametrize(("body", "needle"), [
    (b'{"n": NaN}', "NaN is not a JSON value"),
    (DEEP.encode(), "deeper than"),
    (b'{"n": ' + b"1" * 5000 + b"}", "5000 digits"),
    (b"[1]", "must be a JSON object"),
    (b"\xff", "not UTF-8"),
    (b"{", "not JSON"),
])
def test_api_bodies_are_refused_as_bad_bodies_never_exceptions(body: bytes, needle: str) -> None:
    with pytest.raises(BadBody) as caught:
        json_object(body)
    assert needle in caught.value.message and caught.value.fix


def test_webhook_deliveries_share_the_rule_and_plain_text_stays_raw() -> None:
    assert delivery_payload(b"a=1&b=2") == {"raw": "a=1&b=2"}
    assert delivery_payload(b"") == {}
    assert delivery_payload(b'{"ok": [1]}') == {"ok": [1]}
    for bad in (b'{"n": NaN}', DEEP.encode(), b'{"n": ' + b"7" * 100 + b"}"):
        with pytest.raises(BadBody):
            delivery_payload(bad)
    assert json.loads(json.dumps(delivery_payload(b'{"x": 1.5}'), allow_nan=False)) == {"x": 1.5}


# -- what a plugin may emit ------------------------------------------------------------------

NAMESPACE_TABLE = [
    # (event type, closed namespace or None)
    ("lowly.done", None),
    ("echo.plugin.done", None),
    ("plugins.x", None),
    ("jobs", None),
    ("apis.x", None),
    ("my-webhook.seen", None),
    ("plugin", "plugin.*"),
    ("plugin.account_downgraded", "plugin.*"),
    ("Plugin.Account_Downgraded", "plugin.*"),
    ("pipeline.denied", "pipeline.*"),
    ("job.failed", "job.*"),
    ("JOB.dead", "job.*"),
    ("api.trigger", "api.*"),
    ("ductile.step.succeeded", "ductile.*"),
    ("webhook", "webhook*"),
    ("webhook.received", "webhook*"),
    ("webhooks.github", "webhook*"),
    ("Webhook_x", "webhook*"),
]


@pytest.mark.parametrize(("etype", "namespace"), NAMESPACE_TABLE)
def test_the_gateway_namespaces_are_closed_to_plugins(etype: str, namespace: str | None) -> None:
    from ductile.plugins.emits import reserved

    assert reserved(etype) == namespace


def test_screening_keeps_the_first_events_and_counts_every_drop_in_one_line_per_reason() -> None:
    from ductile.plugins.emits import screen
    from ductile.plugins.protocol import Event

    events = ([Event("lowly.done", {"n": i}) for i in range(30_000)] + [Event("plugin.account_downgraded")] * 3
              + [Event("job.failed"), Event("bad type\x1b[2J"), Event("x" * 201)])
    kept, warnings = screen(events, max_events=100)
    assert [e.payload["n"] for e in kept] == list(range(100))
    assert len(warnings) == 4, warnings
    text = "\n".join(warnings)
    assert "3 events in the gateway's namespace plugin.*" in text and "1 event in the gateway's namespace job.*" in text
    assert "29900 events past service.max_events_per_response (100)" in text
    assert "2 events whose type" in text and "\x1b" not in text
    assert screen(events[:5], max_events=100) == (events[:5], [])
    assert screen(events[:5], max_events=0)[0] == []


# -- authority follows the chain -----------------------------------------------------------

def _auth(scopes: tuple[str, ...] | None, trigger: str = "api:t") -> object:
    from ductile.serve.authority import Authority

    return Authority(trigger, scopes)


AUTHORITY_TABLE = [
    # (root scopes (None: operator), step plugin, command type, queued?)
    (None, "notify", "write", True),                  # schedule / webhook / cli
    (None, "notify", None, True),
    (("*",), "notify", "write", True),
    (("notify:rw",), "notify", "write", True),
    (("echo:rw", "notify:rw"), "notify", "write", True),
    (("echo:ro",), "notify", "write", False),         # the attack
    (("echo:rw",), "notify", "write", False),         # write scope, but on another plugin
    (("notify:ro",), "notify", "write", False),
    (("echo:ro",), "notify", None, False),            # unknown type counts as a write
    (("echo:ro",), "notify", "read", True),           # reads have no side effects
    ((), "notify", "read", True),
    ((), "notify", "write", False),
]


@pytest.mark.parametrize(("scopes", "plugin", "ctype", "queued"), AUTHORITY_TABLE)
def test_authority_table(scopes: tuple[str, ...] | None, plugin: str, ctype: str | None, queued: bool) -> None:
    from ductile.serve.authority import may_start

    reason = may_start(_auth(scopes), plugin, "handle", ctype)  # type: ignore[arg-type]
    assert (reason is None) is queued, reason
    if reason is not None:
        assert "api:t" in reason and plugin in reason


def test_an_unrecorded_authority_is_refused_for_writes_and_round_trips_through_json() -> None:
    from ductile.serve.authority import Authority, may_start

    assert "not recorded" in (may_start(None, "notify", "handle", "write") or "")
    assert may_start(None, "notify", "handle", "read") is None
    for auth in (Authority("schedule"), Authority("api:x", ("a:ro", "*")), Authority("api:y", ())):
        assert Authority.from_dict(json.loads(json.dumps(auth.as_dict()))) == auth
    for junk in (None, {}, {"trigger": 3}, {"trigger": "api:x", "scopes": "*"}, {"trigger": "x", "scopes": [1]}):
        assert Authority.from_dict(junk) is None  # type: ignore[arg-type]


# -- keys seen within a window (replays, routed dedupe keys) --------------------------------

def test_seen_keys_expire_with_their_window_and_a_zero_window_remembers_nothing(tmp_path) -> None:
    from ductile.state.db import open_state

    db = open_state(str(tmp_path / "d.db"))
    made: list[str] = []

    def make() -> str:
        made.append(db.jobs.enqueue("p", "handle", {}, max_attempts=1))
        return made[-1]

    first = db.dedupe.claim(["k:id", "k:body"], 60, make, now=1000)
    assert not first.duplicate and first.job_id == made[0]
    again = db.dedupe.claim(["k:other", "k:body"], 60, make, now=1059)
    assert (again.duplicate, again.job_id, again.key) == (True, made[0], "k:body") and len(made) == 1
    later = db.dedupe.claim(["k:id"], 60, make, now=1060.5)  # the window has passed
    assert not later.duplicate and len(made) == 2
    assert db.dedupe.live("k:id", now=1061) == (True, made[1])
    off = [db.dedupe.claim(["k:off"], 0, make, now=2000) for _ in range(2)]
    assert [c.duplicate for c in off] == [False, False] and len(made) == 4
    assert db.dedupe.live("k:id", now=2000) == (False, None)  # pruned on the way
    nothing = db.dedupe.claim(["k:none"], 60, lambda: None, now=3000)
    assert (nothing.job_id, nothing.duplicate) == (None, False) and db.dedupe.live("k:none", now=3001)[0] is False
    db.close()


# -- a bounded server -------------------------------------------------------------------------

def test_the_longest_idle_connection_makes_room_and_busy_ones_never_do() -> None:
    from ductile.serve.bounded import Conn, victim

    a, b, c = Conn(None, since=5.0), Conn(None, since=1.0, busy=True), Conn(None, since=3.0)
    assert victim([a, b, c]) is c
    assert victim([b]) is None
    assert victim([Conn(None, 0.0, closing=True), a]) is a


@pytest.mark.parametrize(("since", "busy", "now", "late"), [
    (0.0, False, 10.0, False), (0.0, False, 10.01, True), (0.0, True, 999.0, False), (5.0, False, 14.0, False)])
def test_only_an_idle_connection_past_the_header_timeout_is_overdue(since: float, busy: bool, now: float,
                                                                    late: bool) -> None:
    from ductile.serve.bounded import Conn, Limits, overdue

    assert overdue(Conn(None, since, busy), now, Limits(8, header_timeout=10.0, body_timeout=30.0)) is late


NOFILE_TABLE = [
    # (soft, hard, max_connections, workers, soft to run with, connections, note?)
    (1024, 20000, 1024, 2, 20000, 1024, False),      # raised to hard; the cap fits
    (1024, 1024, 1024, 2, 1024, 864, True),          # cannot raise: the cap shrinks, and says so
    (1024, 65536, 100_000, 4, 65536, 65536 - 192, True),
    (4096, 4096, 512, 1, 4096, 512, False),
    (64, 64, 1024, 2, 64, 1, True),                  # absurdly low: one connection, not zero
]


@pytest.mark.parametrize(("soft", "hard", "cap", "workers", "run", "conns", "note"), NOFILE_TABLE)
def test_open_file_plan(soft: int, hard: int, cap: int, workers: int, run: int, conns: int, note: bool) -> None:
    from ductile.serve.limits import plan_nofile

    plan = plan_nofile(soft, hard, max_connections=cap, workers=workers)
    assert (plan.soft, plan.connections, bool(plan.note)) == (run, conns, note)
    if note:
        assert "LimitNOFILE=" in plan.note and "api.max_connections" in plan.note


# -- safe terminal output --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("plain text, é 日本", "plain text, é 日本"),
    ("a\x1b]2;title\x07b", "a\\x1b]2;title\\x07b"),
    ("clear\x1b[2J", "clear\\x1b[2J"),
    ("over\rwrite", "over\\x0dwrite"),
    ("csi\x9b1m", "csi\\x9b1m"),
    ("del\x7f", "del\\x7f"),
    ("nul\x00", "nul\\x00"),
    ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
    ("zw\u200bsp\ufeff", "zw\\u200bsp\\ufeff"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("two\nlines\tand tab", "two\nlines\tand tab"),
])
def test_safe_shows_every_control_and_format_character_as_an_escape(text: str, shown: str) -> None:
    from ductile.render import safe

    assert safe(text) == shown
    assert safe("a\nb", keep_newlines=False) == "a\\nb"


def test_the_terminal_log_formatter_is_safe_and_the_json_one_exact_and_ascii() -> None:
    import logging

    from ductile.serve.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("ductile.plugin", logging.INFO, __file__, 1, "evil: \x1b[2J\u202e", None, None)
    record.fields = {"detail": "\x1b]2;x\x07"}
    assert "\x1b" not in TextFormatter().format(record) and "\\x1b[2J" in TextFormatter().format(record)
    line = JsonFormatter().format(record)
    assert line.isascii() and json.loads(line)["msg"] == "evil: \x1b[2J\u202e"
    assert json.loads(line)["detail"] == "\x1b]2;x\x07"


# -- one redaction rule -----------------------------------------------------------------------

@pytest.mark.parametrize(("key", "secret"), [
    ("token", True), ("api_key", True), ("apiKey", True), ("API-KEY", True), ("X-Auth-Token", True),
    ("password", True), ("db_passwd", True), ("Passphrase", True), ("privateKey", True), ("private_key", True),
    ("client_secret", True), ("aws_access_key_id", True), ("bearer", True), ("Authorization", True),
    ("auth", True), ("credentials", True), ("session_cookie", True), ("access_tokens_url", True),
    ("token_ref", False), ("author", False), ("authority", False), ("keyword", False), ("monkey", False),
    ("channel", False), ("passage", False), ("secretary", False), ("url", False), ("key", False),
])
def test_the_one_redaction_rule(key: str, secret: bool) -> None:
    from ductile.redact import redact, secret_looking

    assert secret_looking(key) is secret
    assert (redact({key: "v"})[key] == "<redacted>") is secret
    assert redact({key: ""}) == {key: ""} and redact({key: None}) == {key: None}


def test_redaction_reaches_any_depth_and_doctor_names_paths_never_values() -> None:
    from ductile.redact import redact, secret_paths

    doc = {"a": [{"token": "t1"}, {"ok": 1}], "b": {"c": {"password": "p"}}, "token_ref": "r"}
    assert redact(doc) == {"a": [{"token": "<redacted>"}, {"ok": 1}], "b": {"c": {"password": "<redacted>"}},
                           "token_ref": "r"}
    assert secret_paths(doc) == ["a[0].token", "b.c.password"]


def test_the_doctor_fix_for_a_secret_in_a_payload_names_a_real_command() -> None:
    import click

    from ductile.cli import cli
    from ductile.config.model import Config, PluginConfig, ScheduleConfig
    from ductile.config.rules import secret_rules

    [finding] = secret_rules(Config(plugins={"p": PluginConfig(schedules=(ScheduleConfig(every=60.0,
                                                                                          payload={"token": "x"}),))}))
    assert "ductile vault set NAME --grant p" in finding.fix
    vault = cli.get_command(click.Context(cli), "vault")
    assert isinstance(vault, click.Group)
    setter = vault.get_command(click.Context(vault), "set")
    assert setter is not None and any("--grant" in p.opts for p in setter.params if isinstance(p, click.Option))
