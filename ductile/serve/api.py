"""The HTTP API (SPEC §8) as a Starlette app; uvicorn serves it (see ``gateway``).

    GET  /healthz                    no token: status (ok | degraded | draining) and why, posture,
                                     queue depth, uptime, breakers not closed, reload results
    POST /system/reload              'system:rw': re-read the config; 200, or 409 (needs a restart)
                                     or 422 (the new config is refused), the old one kept
    GET  /metrics                    Prometheus text; a 'metrics:ro' token, or loopback clients
                                     (api.metrics)
    GET  /plugins                    plugins the token may see
    POST /plugin/{name}/{command}    JSON object body = payload (or upstream's {"payload": {...}}) -> 202 {job_id}
    GET  /job/{id}                   one job, its attempts and events
    GET  /jobs?status=&plugin=&limit=&before=&since=&until=&search=
                                     summaries (no payload/result), streamed, byte-bounded;
                                     search: a substring of the last error or stderr tail
    POST <webhook path>              HMAC-signed deliveries (``webhooks``)

Every error is ``{"error": ..., "fix": ...}`` with a plain status: 400 bad body, 401 no or
unknown token, 403 scope, 404 unknown plugin/command/job, 413 body too large, 503 draining
or a database that cannot take the job now (disk full, read-only: nothing was queued).
Handlers are async only where they read the body; database work runs in the thread pool
so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ductile import __version__
from ductile.config.units import parse_when
from ductile.errors import DuctileError, StateError
from ductile.runtime.boot import Runtime
from ductile.serve.authority import api_token
from ductile.serve.bodies import BadBody, BodyTooLarge, json_object, read_limited, unwrap_payload
from ductile.serve.health import Health
from ductile.serve.intake import Intake
from ductile.serve.logs import log
from ductile.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ductile.serve.metrics import Metrics
from ductile.serve.reload import ReloadResult
from ductile.serve.scopes import Principal, TokenTable, bearer
from ductile.state.db import StateDB
from ductile.state.jobs import JobSummary
from ductile.state.schema import JOB_STATUSES

_log = logging.getLogger("ductile.api")
MAX_LIST = 1000
LIST_PAGE = 200                 # summaries per database read while a listing streams
LIST_BUDGET = 1024 * 1024       # bytes of one /jobs answer; the rest is one ?before= away
MAX_SEARCH = 200                # characters of ?search=


@dataclass
class ApiContext:
    """What the API needs from the running gateway."""

    db: StateDB
    runtime: Runtime
    tokens: TokenTable
    webhook_keys: dict[str, bytes] = field(repr=False)
    wake: Callable[[], None]
    running: Callable[[], int]
    draining: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    health: Health = field(default_factory=Health)
    intake: Intake | None = None  # group commit of triggers (serve); None: one transaction each
    reload: Callable[[str], ReloadResult] | None = None     # the gateway's reload (serve); None: not offered
    ops: Callable[[], dict[str, Any]] | None = None          # breakers and reload results (opsfacts)
    metrics: Metrics | None = None

    async def enqueue(self, plugin: str, command: str, payload: Any, **options: Any) -> str:
        """Queue a job (``options`` as ``JobQueue.enqueue`` takes them); its id once committed."""
        if self.intake is None:
            return await run_in_threadpool(lambda: self.db.jobs.enqueue(plugin, command, payload, **options))
        return await asyncio.wrap_future(self.intake.submit(plugin, command, payload, **options))

    def refused(self, err: DuctileError, what: str) -> JSONResponse:
        """A job the database would not take: 503 with the cause's fix (the client may retry;
        nothing was queued), and one log line per cause, not one per request."""
        cause = err.cause if isinstance(err, StateError) else err.kind
        self.health.report(_log, f"state:{cause}", f"refused {what}: {err.message}", err.fix)
        return error(503, f"the gateway cannot queue jobs right now: {err.message}", err.fix, {"Retry-After": "10"})


def error(status: int, message: str, fix: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "fix": fix}, status_code=status, headers=headers)


def draining() -> JSONResponse:
    return error(503, "the gateway is shutting down and accepts no new jobs", "retry against the restarted gateway",
                 {"Retry-After": "5"})


class Api:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    # -- auth ----------------------------------------------------------------------------

    def principal(self, request: Request) -> Principal | JSONResponse:
        token = bearer(request.headers.get("authorization"))
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            return error(401, "missing bearer token", "send Authorization: Bearer <token>", challenge)
        found = self.ctx.tokens.authenticate(token)
        if found is None:
            log(_log, logging.WARNING, "rejected an unknown bearer token", path=request.url.path,
                client=request.client.host if request.client else None)
            fix = "use a token from api.tokens" if len(self.ctx.tokens) else "configure api.tokens (none are configured)"
            return error(401, "unknown bearer token", fix, challenge)
        return found

    # -- routes --------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        try:
            depth: int | None = await run_in_threadpool(self.ctx.db.jobs.queue_depth)
        except DuctileError:
            depth = None  # a database that cannot be read is reported below, not a 500
        verdict = self.ctx.runtime.assessment.verdict
        summary = self.ctx.health.summary(draining=self.ctx.draining.is_set())
        ops = await run_in_threadpool(self.ctx.ops) if self.ctx.ops is not None else {}
        return JSONResponse({
            **summary.as_dict(),
            **ops,
            "posture": verdict.posture,
            "queue_depth": depth,
            "running": self.ctx.running(),
            "plugins_loaded": len(self.ctx.runtime.plugins),
            "uptime_seconds": round(time.monotonic() - self.ctx.started, 3),
            "version": __version__,
        })

    async def plugins(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, JSONResponse):
            return who
        cfg = self.ctx.runtime.config
        out = []
        for name, plugin in sorted(self.ctx.runtime.plugins.items()):
            pc = cfg.plugins.get(name)
            if pc is None or not who.can_read(name):
                continue
            out.append({"name": name, "description": plugin.manifest.description, "enabled": pc.enabled,
                        "run_as": pc.run_as, "concurrency_safe": plugin.manifest.concurrency_safe,
                        "commands": [{"name": c.name, "type": c.type, "allowed": who.can_run(name, c.type)}
                                     for c in plugin.manifest.commands],
                        "schedules": len(pc.schedules)})
        return JSONResponse({"plugins": out})

    async def trigger(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, JSONResponse):
            return who
        name, command = request.path_params["name"], request.path_params["command"]
        if not who.can_read(name):
            return error(403, f"token {who.name} has no scope for plugin {name}", f"add '{name}:ro' or '{name}:rw' to its scopes")
        cfg = self.ctx.runtime.config
        plugin = self.ctx.runtime.plugins.get(name)
        pc = cfg.plugins.get(name)
        if plugin is None or pc is None or not pc.enabled:
            return error(404, f"no enabled plugin named {name}", "GET /plugins lists them")
        spec = next((c for c in plugin.manifest.commands if c.name == command), None)
        if spec is None:
            return error(404, f"plugin {name} has no command {command}",
                         "use one of: " + ", ".join(c.name for c in plugin.manifest.commands))
        if not who.can_run(name, spec.type):
            return error(403, f"{name} {command} is a {spec.type} command; token {who.name} may only run read commands",
                         f"give the token '{name}:rw'")
        if self.ctx.draining.is_set():
            return draining()
        try:
            payload = unwrap_payload(json_object(await read_limited(request, cfg.api.max_body)))
        except BodyTooLarge as err:
            return error(413, f"request body is larger than api.max_body ({err.limit} bytes)",
                         "send a smaller payload or raise api.max_body")
        except BadBody as err:
            return error(400, err.message, err.fix)
        if self.ctx.draining.is_set():
            return draining()
        try:
            authority = api_token(who)
            job_id = await self.ctx.enqueue(name, command, payload, max_attempts=pc.retry.max_attempts,
                                            trigger=authority.trigger, authority=authority.as_dict())
        except DuctileError as err:
            return self.ctx.refused(err, f"a trigger of {name}/{command}")
        self.ctx.wake()
        log(_log, logging.INFO, f"queued {name}/{command} for token {who.name}", job_id=job_id, plugin=name,
            command=command, token=who.name)
        return JSONResponse({"job_id": job_id, "status": "queued"}, status_code=202)

    async def job(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, JSONResponse):
            return who
        job_id = request.path_params["id"]
        db = self.ctx.db

        def load() -> dict[str, Any] | None:
            with db.read():
                job = db.jobs.get(job_id)
                if job is None:
                    return None
                return {**job.as_dict(), "attempts": [a.as_dict() for a in db.jobs.attempts(job.id)],
                        "events": [e.as_dict() for e in db.events.list_events(job_id=job.id)]}

        found = await run_in_threadpool(load)
        if found is None:
            return error(404, f"no job {job_id}", "GET /jobs lists job ids")
        if not who.can_read(found["plugin"]):
            return error(403, f"token {who.name} may not read jobs of plugin {found['plugin']}",
                         f"add '{found['plugin']}:ro' to its scopes")
        return JSONResponse(found)

    async def jobs(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, JSONResponse):
            return who
        q = request.query_params
        status, plugin, before = q.get("status") or None, q.get("plugin") or None, q.get("before") or None
        if status is not None and status not in JOB_STATUSES:
            return error(400, f"unknown status {status!r}", "use one of " + ", ".join(JOB_STATUSES))
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return error(400, "limit must be an integer", f"use 1..{MAX_LIST}")
        if not 1 <= limit <= MAX_LIST:
            return error(400, f"limit {limit} is out of range", f"use 1..{MAX_LIST}")
        if plugin is not None and not who.can_read(plugin):
            return error(403, f"token {who.name} may not read jobs of plugin {plugin}", f"add '{plugin}:ro' to its scopes")
        readable = who.readable()
        filters: dict[str, Any] = {"search": q.get("search") or None}
        now = time.time()
        for name in ("since", "until"):
            text = q.get(name)
            try:
                filters[name] = parse_when(text, now) if text else None
            except ValueError as err:
                return error(400, f"{name}: {err}", "an age (2h, 7d) or an RFC 3339 time (2026-03-29T08:00:00Z)")
        if filters["search"] is not None and len(filters["search"]) > MAX_SEARCH:
            return error(400, f"search is longer than {MAX_SEARCH} characters", "search for a shorter text")
        first = await run_in_threadpool(lambda: self.ctx.db.jobs.summaries(
            status, plugin, min(LIST_PAGE, limit), plugins=readable, before=before, **filters))
        return StreamingResponse(self._stream(first, status, plugin, limit, readable, **filters),
                                 media_type="application/json")

    async def _stream(self, page: list[JobSummary], status: str | None, plugin: str | None, limit: int,
                      readable: frozenset[str] | None, **filters: Any) -> AsyncIterator[bytes]:
        """``{"jobs": [...], "truncated": bool, "next_before": id|null}``, encoded page by page
        (``LIST_PAGE`` summaries per database read) and cut at ``LIST_BUDGET`` bytes: what one
        answer can cost the gateway is bounded whatever the jobs hold and however many clients
        ask at once. ``next_before`` continues the listing (``?before=``) after a cut."""
        yield b'{"jobs":['
        sent, count, truncated, last = 0, 0, False, None
        while True:
            for summary in page:
                chunk = _encode(summary.as_dict())
                if count and sent + len(chunk) + 1 > LIST_BUDGET:
                    truncated = True
                    break
                yield (b"," if count else b"") + chunk
                sent, count, last = sent + len(chunk) + 1, count + 1, summary.id
            want = min(LIST_PAGE, limit - count)
            if truncated or want <= 0 or len(page) < LIST_PAGE:
                break
            page = await run_in_threadpool(lambda: self.ctx.db.jobs.summaries(
                status, plugin, want, plugins=readable, before=last, **filters))
        yield b'],"truncated":' + (b"true" if truncated else b"false") + b',"next_before":' + \
            _encode(last if truncated else None) + b"}"


    async def reload(self, request: Request) -> Response:
        who = self.principal(request)
        if isinstance(who, JSONResponse):
            return who
        if not who.may("system", "rw"):
            return error(403, f"token {who.name} may not reload the gateway", "give the token the 'system:rw' scope")
        if self.ctx.reload is None:
            return error(404, "this gateway does not reload over the API", "send SIGHUP or run ductile system reload")
        if self.ctx.draining.is_set():
            return draining()
        result = await run_in_threadpool(self.ctx.reload, f"api:{who.name}")
        status = 200 if result.ok else (409 if result.restart_required else 422)
        body = result.as_dict()
        if not result.ok:
            body = {"error": result.message, **body}
        return JSONResponse(body, status_code=status)

    async def metrics(self, request: Request) -> Response:
        mode = self.ctx.runtime.config.api.metrics
        if mode == "off" or self.ctx.metrics is None:
            return error(404, "metrics are off", "set api.metrics: token (or loopback) and reload")
        if not (mode == "loopback" and _loopback(request)):
            who = self.principal(request)
            if isinstance(who, JSONResponse):
                return who
            if not who.may("metrics"):
                return error(403, f"token {who.name} may not read metrics", "give the token the 'metrics:ro' scope")
        body = await run_in_threadpool(self.ctx.metrics.render)
        return Response(body, media_type=None, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _loopback(request: Request) -> bool:
    import ipaddress

    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _encode(value: Any) -> bytes:
    """The same JSON as JSONResponse writes."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, f"no route {request.url.path}",
                     "see GET /healthz, /plugins, /jobs, /metrics; POST /plugin/{name}/{command}, /system/reload")
    if exc.status_code == 405:
        return error(405, f"{request.method} is not allowed on {request.url.path}", "check the method", exc.headers)
    return error(exc.status_code, str(exc.detail), "see the API documentation")


class CatchAll:
    """The outermost layer: an unexpected exception becomes a JSON 500 and ONE log line (a
    traceback only at log_level debug), never a stack trace from the server's own logger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence for one request
            debug = logging.getLogger().isEnabledFor(logging.DEBUG)
            _log.error(f"internal error answering {scope.get('method')} {scope.get('path')}: "
                       f"{type(exc).__name__}: {exc}", exc_info=debug)
            if not started:
                await error(500, "internal error", "see the gateway log; rerun with log_level: debug for a traceback")(
                    scope, receive, send)


def build_app(ctx: ApiContext) -> CatchAll:
    from ductile.serve.webhooks import webhook_routes

    api = Api(ctx)
    routes = [
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/plugins", api.plugins, methods=["GET"]),
        Route("/plugin/{name}/{command}", api.trigger, methods=["POST"]),
        Route("/job/{id}", api.job, methods=["GET"]),
        Route("/jobs", api.jobs, methods=["GET"]),
        Route("/system/reload", api.reload, methods=["POST"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *webhook_routes(ctx),
    ]
    return CatchAll(Starlette(routes=routes, exception_handlers={HTTPException: _http_error}))
