"""Protocol v2: the request a plugin reads on stdin and the response it writes on stdout.

Pure functions over bytes. ``decode_response`` is the gate between an untrusted process
and the gateway: it accepts exactly one UTF-8 JSON object and turns everything else
(overflow, empty, not UTF-8, not JSON, a partial or trailing document, too deep, the wrong
shape) into a ``ProtocolError`` whose message is one line saying what was wrong. It is
lenient only where upstream is: unknown keys (``ductile_stopwatch_subs``...) are ignored
and ``retry`` defaults to true.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from ductile import strictjson
from ductile.errors import ProtocolError

PROTOCOL_VERSION = 2
EXIT_TERMINAL = 78            # EX_CONFIG: the plugin says retrying cannot help
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024  # service.max_plugin_output's default
STDERR_TAIL = 64 * 1024       # how much stderr the ledger keeps
MAX_NESTING = strictjson.MAX_DEPTH  # deepest JSON a response may nest; deeper is refused
_SNIPPET = 40                 # how much offending output a message may quote

Status = Literal["ok", "error"]
_FIX = "make the plugin write exactly one JSON object to stdout (logs go to stderr)"


MAX_DEDUPE_KEY = 512


@dataclass(frozen=True)
class Event:
    """An event the plugin emits; pipelines route it to other plugins. ``dedupe_key``
    (upstream's protocol) names what the event is about: a routed job whose key was
    already routed within ``service.dedupe_ttl`` is not queued again."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict, hash=False)
    dedupe_key: str | None = None


@dataclass(frozen=True)
class LogEntry:
    level: str
    message: str


@dataclass(frozen=True)
class Response:
    """A decoded, shape-checked plugin answer."""

    status: Status
    result: Any = field(default=None, hash=False)
    error: str | None = None
    retry: bool = True
    events: tuple[Event, ...] = ()
    state_updates: dict[str, Any] = field(default_factory=dict, hash=False)
    logs: tuple[LogEntry, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


API_TRIGGER = "api.trigger"


def request_event(command: str, payload: Any, event: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``event`` a request carries: the job's own (a pipeline's or a webhook's), or, for a
    ``handle`` job that has none, upstream's envelope ``{type: "api.trigger", payload}``.

    Upstream wraps the payload of every such job (CLI, API, schedule) this way and its
    plugins read ``event.payload``; without the envelope they fail ("event must include
    url") or, worse, misclassify and succeed. Decided here, where the request is built, so
    no caller can forget it."""
    if event is not None:
        return dict(event)
    if command == "handle":
        return {"type": API_TRIGGER, "payload": payload}
    return None


def build_request(*, job_id: str, command: str, config: Mapping[str, Any], state: Mapping[str, Any],
                  payload: Any, event: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
                  deadline_at: datetime | str | None = None, secrets: Mapping[str, str] | None = None) -> bytes:
    """One JSON object and a newline, for the plugin's stdin.

    ``secrets`` is omitted entirely when there are none, so a plugin that was granted
    nothing cannot tell an empty vault from no vault. ``event`` appears when set and on every
    ``handle`` request (``request_event``); ``deadline_at`` when set; ``context`` is always
    an object. Output is ASCII (non-ASCII escaped), so
    no text in a payload can make the request invalid UTF-8.
    """
    request: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "job_id": job_id,
        "command": command,
        "config": dict(config),
        "state": dict(state),
        "payload": payload,
        "context": dict(context or {}),
    }
    carried = request_event(command, payload, event)
    if carried is not None:
        request["event"] = carried
    if deadline_at is not None:
        request["deadline_at"] = _rfc3339(deadline_at)
    if secrets:
        request["secrets"] = dict(secrets)
    try:
        text = json.dumps(request, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        # never echo the values: the request may carry secrets
        raise ProtocolError(f"the request for job {job_id} cannot be encoded as JSON ({type(err).__name__})",
                            where=f"job {job_id}", fix="pass only JSON data (no NaN, bytes or objects) in config, "
                            "state and payload") from None
    return (text + "\n").encode("ascii")


def _rfc3339(moment: datetime | str) -> str:
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def decode_response(stdout: bytes, *, truncated: bool, limit: int | None = None) -> Response:
    """Decode a plugin's stdout or raise ``ProtocolError`` with a one-line reason.

    ``truncated``: the spawner stopped reading at its cap (``limit`` bytes, when known),
    so whatever arrived is not the whole answer and must not be half-trusted.
    """
    if truncated:
        cap = f" of {limit} bytes" if limit else ""
        raise _refuse(f"output exceeded the stdout limit{cap}; the job was stopped",
                      "make the plugin answer smaller, or raise service.max_plugin_output")
    if not stdout.strip():
        raise _refuse("output is empty (expected one JSON object)", _FIX)
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _refuse(f"output is not valid UTF-8 (bad byte at offset {err.start})",
                      "write UTF-8 JSON to stdout") from None
    value = _parse_one_object(text)
    return _shape(value)


def is_terminal(response: Response | None, exit_code: int | None) -> bool:
    """Whether retrying cannot help: exit code 78, or ``status: error`` with ``retry: false``."""
    if exit_code == EXIT_TERMINAL:
        return True
    return response is not None and response.status == "error" and response.retry is False


def _refuse(reason: str, fix: str) -> ProtocolError:
    return ProtocolError(f"plugin response refused: {reason}", where="stdout", fix=fix)


def _snippet(text: str) -> str:
    text = text.strip()
    return repr(text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else ""))


def _parse_one_object(text: str) -> Any:
    start = len(text) - len(text.lstrip())
    try:
        value, end = strictjson.raw_decode(text, start)
    except strictjson.JsonRefused as err:
        raise _refuse(f"output is not usable JSON: {err.reason}", "write finite numbers, integers of at most "
                      f"{strictjson.MAX_INT_DIGITS} digits and at most {MAX_NESTING} levels of nesting") from None
    except strictjson.NotJson as err:
        if err.pos >= len(text.rstrip()):
            raise _refuse("output ends in the middle of a JSON value (partial or cut-off output)", _FIX) from None
        raise _refuse(f"output is not JSON ({err.reason}; starts {_snippet(text)})", _FIX) from None
    rest = text[end:]
    if rest.strip():
        raise _refuse(f"output has trailing data after the JSON object (starts {_snippet(rest)})",
                      "write exactly one JSON object and nothing else to stdout")
    if not isinstance(value, dict):
        raise _refuse(f"output is a JSON {_json_kind(value)}, not an object", _FIX)
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _shape(obj: dict[str, Any]) -> Response:
    status = obj.get("status")
    if status is None:
        raise _refuse("'status' is missing", 'answer with "status": "ok" or "status": "error"')
    if status not in ("ok", "error"):
        raise _refuse(f"'status' must be \"ok\" or \"error\", got {_show(status)}",
                      'answer with "status": "ok" or "status": "error"')
    retry = obj.get("retry")
    if retry is None:
        retry = True
    elif not isinstance(retry, bool):
        raise _refuse(f"'retry' must be true or false, got {_show(retry)}", 'write "retry": false (or omit it)')
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error, ensure_ascii=False)
    state_updates = obj.get("state_updates")
    if state_updates is None:
        state_updates = {}
    elif not isinstance(state_updates, dict):
        raise _refuse(f"'state_updates' must be an object, got a {_json_kind(state_updates)}",
                      'write "state_updates": {"key": value}')
    return Response(
        status=status,
        result=obj.get("result"),
        error=error,
        retry=retry,
        events=_events(obj.get("events")),
        state_updates=state_updates,
        logs=_logs(obj.get("logs")),
    )


def _events(raw: Any) -> tuple[Event, ...]:
    fix = 'write "events": [{"type": "name.done", "payload": {...}}]'
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _refuse(f"'events' must be a list, got a {_json_kind(raw)}", fix)
    out: list[Event] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _refuse(f"events[{i}] must be an object, got a {_json_kind(item)}", fix)
        etype = item.get("type")
        if not isinstance(etype, str) or not etype.strip():
            raise _refuse(f"events[{i}].type must be a non-empty string, got {_show(etype)}", fix)
        payload = item.get("payload")
        if payload is None:
            payload = {}
        elif not isinstance(payload, dict):
            raise _refuse(f"events[{i}].payload must be an object, got a {_json_kind(payload)}", fix)
        out.append(Event(etype, payload, _dedupe_key(i, item.get("dedupe_key"))))
    return tuple(out)


def _dedupe_key(i: int, raw: Any) -> str | None:
    """A string (a number is taken as its text, as upstream's decoder does), or absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        raw = json.dumps(raw)
    if not isinstance(raw, str):
        raise _refuse(f"events[{i}].dedupe_key must be a string, got a {_json_kind(raw)}",
                      'write "dedupe_key": "<what the event is about>"')
    if len(raw) > MAX_DEDUPE_KEY:
        raise _refuse(f"events[{i}].dedupe_key is {len(raw)} characters (at most {MAX_DEDUPE_KEY})",
                      "use a shorter key, e.g. a hash of what the event is about")
    return raw


def _logs(raw: Any) -> tuple[LogEntry, ...]:
    """Log lines are advisory, so odd entries are kept as text rather than failing a job."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _refuse(f"'logs' must be a list, got a {_json_kind(raw)}",
                      'write "logs": [{"level": "info", "message": "..."}]')
    out: list[LogEntry] = []
    for item in raw:
        if isinstance(item, dict):
            level, message = item.get("level", "info"), item.get("message", "")
            out.append(LogEntry(level if isinstance(level, str) else str(level),
                                message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)))
        elif isinstance(item, str):
            out.append(LogEntry("info", item))
        else:
            out.append(LogEntry("info", json.dumps(item, ensure_ascii=False)))
    return tuple(out)


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."
