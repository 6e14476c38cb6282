"""A bounded HTTP server: at most ``api.max_connections`` connections, and none may sit
half-sent.

What uvicorn offers and what it does not (uvicorn 0.29-0.54, see encode/uvicorn#157):
``timeout_keep_alive`` closes a connection that sends *nothing* after a response, but the
timer is cancelled by every byte received, and there is no timeout at all before the first
request; ``limit_concurrency`` answers 503 once that many connections are open, which
makes an idle flood refuse ``/healthz`` too; ``h11_max_incomplete_event_size`` bounds the
bytes a header may take (16 KiB), not the time. So 1 100 half-sent requests held 1 100
sockets for ever. This module adds the missing part in front of uvicorn's own protocol:

* **admission**: at the cap, the connection that has been idle longest (no request in
  progress) is closed to make room; only when every connection is busy is the newcomer
  closed. A client that sends its request promptly is therefore always served, however
  many idle sockets an attacker holds.
* **header timeout**: a connection with no request in progress for ``api.header_timeout``
  (since it opened or since its last response) is closed; this catches the half-sent
  request that keeps resetting uvicorn's keep-alive timer.
* **body timeout**: a request whose body has not fully arrived ``api.body_timeout`` after
  its headers is cut off; the handler sees a disconnect and answers nothing.

How the pieces meet: uvicorn takes a protocol *class* (``Config(http=...)``), so
``guarded_protocol`` wraps its H11 protocol, forwarding every call and registering the
transport here. The ASGI task uvicorn creates for a request copies the context of the
``data_received`` call that parsed the headers, so a ``ContextVar`` set around that call
tells the middleware, without any uvicorn internals, which connection a request is on.

The decisions (who to evict, who is overdue) are pure functions over plain states.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ductile.serve.logs import log

_log = logging.getLogger("ductile.api")
SWEEP_EVERY = 1.0       # seconds between looks for overdue connections
REPORT_EVERY = 10.0     # at most one summary log line per this many seconds


@dataclass(frozen=True)
class Limits:
    max_connections: int
    header_timeout: float
    body_timeout: float


@dataclass(eq=False)
class Conn:
    """One live connection. ``since``: when its current phase began (opened, or last
    request finished); ``busy``: a request's headers arrived and its handler has not
    returned."""

    transport: Any
    since: float
    busy: bool = False
    closing: bool = False


# -- decisions (pure) -------------------------------------------------------------------

def victim(conns: Iterable[Conn]) -> Conn | None:
    """The connection to close to admit a new one: the longest idle, or None if all are busy."""
    idle = [c for c in conns if not c.busy and not c.closing]
    return min(idle, key=lambda c: c.since) if idle else None


def overdue(conn: Conn, now: float, limits: Limits) -> bool:
    """A connection with no request in progress past the header timeout."""
    return not conn.busy and not conn.closing and now - conn.since > limits.header_timeout


# -- the guard --------------------------------------------------------------------------

CURRENT: contextvars.ContextVar[Conn | None] = contextvars.ContextVar("ductile_connection", default=None)


@dataclass
class Counters:
    evicted: int = 0      # idle connections closed to admit a new one
    refused: int = 0      # new connections closed because every slot was busy
    idle: int = 0         # closed by the header timeout
    slow_body: int = 0    # closed by the body timeout

    def any(self) -> bool:
        return bool(self.evicted or self.refused or self.idle or self.slow_body)


@dataclass
class Guard:
    limits: Limits
    live: dict[int, Conn] = field(default_factory=dict)
    counts: Counters = field(default_factory=Counters)
    _sweeper: asyncio.TimerHandle | None = None
    _reported_at: float | None = None

    # called by the protocol wrapper --------------------------------------------------

    def opened(self, transport: Any, loop: asyncio.AbstractEventLoop) -> Conn:
        now = loop.time()
        conn = Conn(transport, now)
        if len(self.live) >= self.limits.max_connections:
            out = victim(self.live.values())
            if out is None:
                self.counts.refused += 1
                conn.closing = True
                transport.abort()
                self._maybe_report(now)
                return conn
            self.counts.evicted += 1
            self._close(out, abort=True)
            self._maybe_report(now)
        self.live[id(conn)] = conn
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep, loop)
        return conn

    def closed(self, conn: Conn | None) -> None:
        if conn is not None:
            self.live.pop(id(conn), None)

    # called by the middleware ---------------------------------------------------------

    def begin(self, conn: Conn) -> None:
        conn.busy = True

    def end(self, conn: Conn, now: float) -> None:
        conn.busy = False
        conn.since = now

    def body_timed_out(self, conn: Conn) -> None:
        self.counts.slow_body += 1
        self._close(conn, abort=False)

    # internals -----------------------------------------------------------------------

    def _close(self, conn: Conn, *, abort: bool) -> None:
        conn.closing = True
        self.live.pop(id(conn), None)
        if abort:
            conn.transport.abort()   # frees the descriptor now, not after a FIN handshake
        else:
            conn.transport.close()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c in self.live.values() if overdue(c, now, self.limits)]:
            self.counts.idle += 1
            self._close(conn, abort=True)
        self._maybe_report(now)
        self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep, loop)

    def _maybe_report(self, now: float) -> None:
        """The first trouble is logged at once; after that one summary per REPORT_EVERY."""
        if self.counts.any() and (self._reported_at is None or now - self._reported_at >= REPORT_EVERY):
            self._report(now)

    def _report(self, now: float) -> None:
        c, lim = self.counts, self.limits
        parts = []
        if c.evicted:
            parts.append(f"closed {c.evicted} idle connection(s) to admit new ones at api.max_connections={lim.max_connections}")
        if c.refused:
            parts.append(f"refused {c.refused} connection(s) while all {lim.max_connections} were busy")
        if c.idle:
            parts.append(f"closed {c.idle} that sent no complete request within api.header_timeout={lim.header_timeout:g}s")
        if c.slow_body:
            parts.append(f"cut off {c.slow_body} whose body took longer than api.body_timeout={lim.body_timeout:g}s")
        log(_log, logging.WARNING, "connection guard: " + "; ".join(parts), open=len(self.live), evicted=c.evicted,
            refused=c.refused, header_timeouts=c.idle, body_timeouts=c.slow_body,
            fix="if these are real clients, raise api.max_connections or the timeouts; otherwise nothing to do")
        self.counts = Counters()
        self._reported_at = now

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def guarded_protocol(guard: Guard, inner_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """A protocol class uvicorn can use (``Config(http=...)``) that wraps ``inner_class``."""

    class Guarded(asyncio.Protocol):
        def __init__(self, config: Any, server_state: Any, app_state: Any,
                     _loop: asyncio.AbstractEventLoop | None = None) -> None:
            self.inner: Any = inner_class(config=config, server_state=server_state,  # type: ignore[call-arg]
                                          app_state=app_state, _loop=_loop)
            self.loop = _loop or asyncio.get_event_loop()
            self.conn: Conn | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.inner.connection_made(transport)
            self.conn = guard.opened(transport, self.loop)

        def data_received(self, data: bytes) -> None:
            token = CURRENT.set(self.conn)
            try:
                self.inner.data_received(data)
            finally:
                CURRENT.reset(token)

        def eof_received(self) -> bool | None:
            return self.inner.eof_received()  # type: ignore[no-any-return]

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self.conn)
            self.inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self.inner.pause_writing()

        def resume_writing(self) -> None:
            self.inner.resume_writing()

    Guarded.__name__ = f"Guarded{inner_class.__name__}"
    return Guarded


class GuardMiddleware:
    """Marks a connection busy while its request is handled and enforces the body timeout."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = CURRENT.get()
        if scope["type"] != "http" or conn is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.guard.limits.body_timeout
        body_done = False

        async def bounded_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                self.guard.body_timed_out(conn)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        self.guard.begin(conn)
        try:
            await self.app(scope, bounded_receive, send)
        finally:
            self.guard.end(conn, loop.time())
