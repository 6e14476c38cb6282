"""Request bodies with a hard size limit, enforced while the body streams in.

A ``Content-Length`` over the limit is refused before a byte is read; a body without one
(chunked) or one that lies about its length is cut off the moment it passes the limit, so
an oversized request costs at most ``limit`` bytes of memory.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request


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
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    """An empty body is ``{}``; anything else must be one UTF-8 JSON object."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadBody("body is not UTF-8", "send UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise BadBody(f"body is not JSON: {err.msg} at character {err.pos}", "send a JSON object, e.g. {}") from None
    if not isinstance(value, dict):
        raise BadBody(f"body must be a JSON object, got {type(value).__name__}", "wrap the payload in {...}")
    return value
