"""Request bodies with a hard size limit, enforced while the body streams in.

A ``Content-Length`` over the limit is refused before a byte is read; a body without one
(chunked) or one that lies about its length is cut off the moment it passes the limit, so
an oversized request costs at most ``limit`` bytes of memory. The body is then read under
ductile's one JSON rule (``ductile.strictjson``), so every refusal is a 400 with a reason.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from ductile import strictjson


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class BadBody(Exception):
    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(limit)
        except ValueError:
            raise BadBody("Content-Length is not a number", "send a valid Content-Length or none") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadBody("the client went away (or was too slow) before the body arrived",
                      "send the whole body promptly") from None
    return b"".join(chunks)


JSON_FIX = (f"send finite numbers (no NaN or Infinity), integers of at most {strictjson.MAX_INT_DIGITS} digits "
            f"and at most {strictjson.MAX_DEPTH} levels of nesting")


def parse_json(text: str) -> Any:
    """The body under ductile's one JSON rule (``strictjson``): a value json would accept
    but ductile must not (NaN, a 5,000-digit integer, 100,000 levels of nesting) is a
    ``BadBody`` (400), never an exception that reaches the server as a 500."""
    try:
        return strictjson.loads(text)
    except strictjson.JsonRefused as err:
        raise BadBody(f"body refused: {err.reason}", JSON_FIX) from None
    except strictjson.NotJson as err:
        raise BadBody(f"body is not JSON: {err.reason}", "send a JSON object, e.g. {}") from None


def json_object(body: bytes) -> dict[str, Any]:
    """An empty body is ``{}``; anything else must be one UTF-8 JSON object."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("body is not UTF-8", "send UTF-8 JSON") from None
    value = parse_json(text)
    if not isinstance(value, dict):
        raise BadBody(f"body must be a JSON object, got {type(value).__name__}", "wrap the payload in {...}")
    return value


def unwrap_payload(body: dict[str, Any]) -> dict[str, Any]:
    """Upstream's clients send ``{"payload": {...}}``; the payload is what is inside. Only a
    body whose one key is ``payload`` holding an object is unwrapped, so a payload that
    merely has a ``payload`` key among others arrives as sent."""
    if set(body) == {"payload"} and isinstance(body["payload"], dict):
        return dict(body["payload"])
    return body
