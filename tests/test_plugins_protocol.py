"""Protocol v2: request envelopes, and the gate a plugin's stdout must pass."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from ductile.errors import ProtocolError
from ductile.plugins.protocol import (
    MAX_NESTING,
    Event,
    LogEntry,
    Response,
    build_request,
    decode_response,
    is_terminal,
)


def request(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {"job_id": "j-1", "command": "poll", "config": {"a": 1}, "state": {"n": 2},
                               "payload": {"p": True}}
    args.update(overrides)
    raw = build_request(**args)  # type: ignore[arg-type]
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    return json.loads(raw)


def test_request_carries_protocol_2_and_the_job() -> None:
    req = request()
    assert req == {"protocol": 2, "job_id": "j-1", "command": "poll", "config": {"a": 1}, "state": {"n": 2},
                   "payload": {"p": True}, "context": {}}


def test_secrets_key_is_absent_unless_something_was_composed() -> None:
    assert "secrets" not in request()
    assert "secrets" not in request(secrets={})
    assert request(secrets={"token": "s3cret"})["secrets"] == {"token": "s3cret"}


def test_event_context_and_deadline_when_given() -> None:
    deadline = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    req = request(command="handle", event={"type": "echo.done", "payload": {}}, context={"ductile_plugin": "x"},
                  deadline_at=deadline)
    assert req["event"] == {"type": "echo.done", "payload": {}}
    assert req["context"] == {"ductile_plugin": "x"}
    assert req["deadline_at"] == "2026-01-02T01:04:05Z"


def test_request_is_ascii_whatever_the_payload() -> None:
    raw = build_request(job_id="j", command="poll", config={}, state={}, payload={"t": "héllo \ud800 ☃"})
    raw.decode("ascii")
    assert json.loads(raw)["payload"]["t"] == "héllo \ud800 ☃"


def test_unencodable_request_is_refused_without_echoing_values() -> None:
    with pytest.raises(ProtocolError) as caught:
        build_request(job_id="j", command="poll", config={}, state={}, payload=float("nan"), secrets={"k": "hunter2"})
    assert "hunter2" not in caught.value.one_line() and "job j" in caught.value.one_line()


def test_full_response_decodes() -> None:
    out = json.dumps({
        "status": "ok", "result": [1, {"x": None}], "error": None, "retry": False,
        "events": [{"type": "echo.done", "payload": {"m": 1}}, {"type": "bare"}],
        "state_updates": {"count": 3},
        "logs": [{"level": "warn", "message": "hm"}, "plain", {"message": {"k": 1}}],
    }).encode()
    resp = decode_response(out, truncated=False)
    assert resp == Response(
        status="ok", result=[1, {"x": None}], error=None, retry=False,
        events=(Event("echo.done", {"m": 1}), Event("bare", {})),
        state_updates={"count": 3},
        logs=(LogEntry("warn", "hm"), LogEntry("info", "plain"), LogEntry("info", '{"k": 1}')),
    )


def test_lenient_where_upstream_is() -> None:
    resp = decode_response(b'\n  {"status": "error", "error": "nope", "ductile_stopwatch_subs": [{"n": 1}],'
                           b' "something_new": 1}\n\n', truncated=False)
    assert resp.status == "error" and resp.error == "nope" and resp.retry is True
    assert resp.events == () and resp.state_updates == {} and resp.logs == ()
    structured = decode_response(b'{"status":"error","error":{"code":7}}', truncated=False)
    assert structured.error == '{"code": 7}'


BAD = [
    # (stdout, truncated, words the one-line reason must contain)
    (b"", False, "empty"),
    (b"  \n\t", False, "empty"),
    (b"{", False, "ends in the middle"),
    (b'{"status": "ok"', False, "ends in the middle"),
    (b"[]", False, "JSON array, not an object"),
    (b'"x"', False, "JSON string, not an object"),
    (b"null", False, "JSON null, not an object"),
    (b"42", False, "JSON number, not an object"),
    (b"\xff\xfe{}", False, "not valid UTF-8"),
    (b'{"status":"ok","x":"\xc3"}', False, "not valid UTF-8"),
    (b'{"status":"ok"} trailing', False, "trailing data"),
    (b'{"status":"ok"}{"status":"ok"}', False, "trailing data"),
    (b"hello world", False, "not JSON"),
    (b"[" * 100_000, False, "deeper than"),
    (b"[" * 100_000 + b"]" * 100_000, False, "deeper than"),
    (b'{"status":"ok","r":' + b"[" * (MAX_NESTING + 5) + b"]" * (MAX_NESTING + 5) + b"}", False, "deeper than"),
    (b'{"status":"ok","r":NaN}', False, "NaN is not a JSON value"),
    (b'{"status":"ok","r":-Infinity}', False, "-Infinity is not a JSON value"),
    (b'{"status":"ok","r":' + b"9" * 5000 + b"}", False, "not usable JSON: an integer has 5000 digits"),
    (b'{"status":"ok","r":1e999}', False, "out of range"),
    (b'{"status":"ok"}', True, "exceeded the stdout limit"),
    (b"", True, "exceeded the stdout limit"),
    (b"{}", False, "'status' is missing"),
    (b'{"status":"OK"}', False, "'status' must be \"ok\" or \"error\""),
    (b'{"status":1}', False, "'status' must be"),
    (b'{"status":"ok","retry":"false"}', False, "'retry' must be true or false"),
    (b'{"status":"ok","events":{}}', False, "'events' must be a list"),
    (b'{"status":"ok","events":["x"]}', False, "events[0] must be an object"),
    (b'{"status":"ok","events":[{"payload":{}}]}', False, "events[0].type must be a non-empty string"),
    (b'{"status":"ok","events":[{"type":"  "}]}', False, "events[0].type must be a non-empty string"),
    (b'{"status":"ok","events":[{"type":"a"},{"type":"b","payload":[1]}]}', False, "events[1].payload must be an object"),
    (b'{"status":"ok","state_updates":[1]}', False, "'state_updates' must be an object"),
    (b'{"status":"ok","logs":"x"}', False, "'logs' must be a list"),
]


@pytest.mark.parametrize(("stdout", "truncated", "reason"), BAD, ids=[r for _, _, r in BAD])
def test_bad_output_fails_with_a_one_line_reason(stdout: bytes, truncated: bool, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_response(stdout, truncated=truncated)
    line = caught.value.one_line()
    assert reason in line, line
    assert "\n" not in line and len(line) < 400 and caught.value.fix


def test_overflow_names_the_limit() -> None:
    with pytest.raises(ProtocolError, match="of 4096 bytes"):
        decode_response(b"{", truncated=True, limit=4096)


def test_deep_nesting_is_refused_even_on_a_nearly_full_stack() -> None:
    # the decoder recurses in C; near the recursion limit it must still answer with ProtocolError
    def nest(n: int) -> None:
        if n:
            nest(n - 1)
            return
        with pytest.raises(ProtocolError):
            decode_response(b'{"status":"ok","r":' + b"[" * 500 + b"]" * 500 + b"}", truncated=False)

    nest(sys.getrecursionlimit() - 100)


def test_deeply_nested_output_does_not_crash_a_fresh_interpreter() -> None:
    code = ("import sys; from ductile.plugins.protocol import decode_response\n"
            "from ductile.errors import ProtocolError\n"
            "try:\n    decode_response(b'{\"a\":' * 1_000_000, truncated=False)\n"
            "except ProtocolError as e:\n    print('refused', e.message)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("refused"), proc.stderr


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512), st.booleans())
def test_arbitrary_bytes_decode_or_raise_protocol_error(stdout: bytes, truncated: bool) -> None:
    try:
        resp = decode_response(stdout, truncated=truncated)
    except ProtocolError as err:
        assert "\n" not in err.one_line()
    else:
        assert not truncated and isinstance(resp, Response) and resp.status in ("ok", "error")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_keys = st.sampled_from(["status", "result", "error", "retry", "events", "state_updates", "logs", "x"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _json | st.sampled_from(["ok", "error"]), max_size=7), st.text(" \n\t", max_size=3))
def test_arbitrary_json_objects_decode_or_raise_protocol_error(obj: dict[str, object], pad: str) -> None:
    raw = (pad + json.dumps(obj) + pad).encode()
    try:
        resp = decode_response(raw, truncated=False)
    except ProtocolError:
        return
    assert resp.status == obj["status"]
    assert resp.retry is (obj.get("retry") is not False)


@pytest.mark.parametrize(("status", "retry", "exit_code", "terminal"), [
    ("ok", True, 0, False),
    ("error", True, 1, False),
    ("error", False, 1, True),
    ("error", False, 0, True),
    ("ok", False, 0, False),      # retry:false only matters on an error
    ("ok", True, 78, True),       # EX_CONFIG is terminal whatever was printed
    ("error", True, 78, True),
])
def test_terminal_table(status: str, retry: bool, exit_code: int, terminal: bool) -> None:
    resp = Response(status=status, retry=retry)  # type: ignore[arg-type]
    assert is_terminal(resp, exit_code) is terminal


def test_no_response_is_terminal_only_on_exit_78() -> None:
    assert is_terminal(None, 78) is True
    assert is_terminal(None, 1) is False
