"""Signed inbound webhooks: one route per ``webhooks:`` entry.

A delivery is read up to the webhook's ``max_body`` (413 past it), its signature checked
over the raw bytes against the key resolved from the vault at boot (401 and nothing
queued when missing or wrong), then one job is queued for the webhook's plugin and
command with ``event = {type: "webhook", payload: <parsed JSON or {"raw": text}>, ...}``.

Replays: a signed delivery is remembered for ``replay_window`` (default 24h) by its
delivery id (``delivery_header``, else ``X-GitHub-Delivery``, else ``X-Request-Id``) AND by
the digest of its signed body. A repeat of either answers 200 ``{"duplicate": true,
"job_id": <first>}`` and queues nothing. The body counts too because the signature covers
only the body: whoever captured one delivery could otherwise replay it under a fresh id.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ductile import strictjson
from ductile.config.model import WebhookConfig
from ductile.errors import DuctileError
from ductile.serve.api import ApiContext, draining, error
from ductile.serve.authority import webhook as webhook_authority
from ductile.serve.bodies import JSON_FIX, BadBody, BodyTooLarge, read_limited
from ductile.serve.logs import log
from ductile.serve.signatures import verify

_log = logging.getLogger("ductile.webhooks")
EVENT_TYPE = "webhook"
DELIVERY_HEADERS = ("X-GitHub-Delivery", "X-Request-Id")
MAX_DELIVERY_ID = 200


def delivery_id(hook: WebhookConfig, headers: Mapping[str, str]) -> str | None:
    """The sender's id for this delivery, from the configured header or the usual ones."""
    for name in (hook.delivery_header,) if hook.delivery_header else DELIVERY_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()
    return None


def replay_keys(path: str, delivery: str | None, body: bytes) -> list[str]:
    """What a replay of this delivery would repeat: its id (when it has one) and its body."""
    keys = [f"webhook:{path}:body:{hashlib.sha256(body).hexdigest()}"]
    if delivery:
        keys.insert(0, f"webhook:{path}:id:{hashlib.sha256(delivery.encode()).hexdigest()}")
    return keys


def delivery_payload(body: bytes) -> Any:
    """The parsed JSON body, or ``{"raw": text}`` when it is not JSON (form posts, text).

    JSON that breaks ductile's one JSON rule (NaN, huge integers, deep nesting) is not
    passed on as text: it raises ``BadBody`` (400), exactly as it would on the API."""
    text = body.decode("utf-8", "replace")
    if not text.strip():
        return {}
    try:
        return strictjson.loads(text)
    except strictjson.NotJson:
        return {"raw": text}
    except strictjson.JsonRefused as err:
        raise BadBody(f"delivery refused: {err.reason}", JSON_FIX) from None


def _handler(ctx: ApiContext, hook: WebhookConfig, index: int):  # type: ignore[no-untyped-def]
    async def receive(request: Request) -> Response:
        if ctx.draining.is_set():
            return draining()
        try:
            body = await read_limited(request, hook.max_body)
        except BodyTooLarge as err:
            return error(413, f"delivery is larger than webhooks[{index}].max_body ({err.limit} bytes)",
                         "raise the webhook's max_body if the sender is legitimate")
        except Exception:  # noqa: BLE001 - a broken client connection is not ours to report
            return error(400, "could not read the request body", "resend the delivery")
        key = ctx.webhook_keys.get(hook.path, b"")
        if not verify(key, body, request.headers.get(hook.signature_header)):
            log(_log, logging.WARNING, f"webhook {hook.path}: bad or missing signature; nothing queued",
                path=hook.path, header=hook.signature_header, client=request.client.host if request.client else None)
            return error(401, f"missing or invalid {hook.signature_header} signature",
                         "sign the raw body with HMAC-SHA256 and the shared key (sha256=<hex>)")
        try:
            payload = delivery_payload(body)
        except BadBody as err:
            log(_log, logging.WARNING, f"webhook {hook.path}: {err.message}; nothing queued", path=hook.path)
            return error(400, err.message, err.fix)
        delivery = delivery_id(hook, request.headers)
        if delivery is not None and len(delivery) > MAX_DELIVERY_ID:
            return error(400, f"delivery id is longer than {MAX_DELIVERY_ID} characters", "send the sender's own id")
        pc = ctx.runtime.config.plugins.get(hook.plugin)
        event = {"type": EVENT_TYPE, "payload": payload, "path": hook.path, "delivery": delivery}
        authority = webhook_authority(hook.path)

        def queue() -> str:
            return ctx.db.jobs.enqueue(hook.plugin, hook.command, payload if isinstance(payload, dict) else {},
                                       event=event, max_attempts=pc.retry.max_attempts if pc is not None else 1,
                                       trigger=authority.trigger, authority=authority.as_dict())

        try:
            claimed = await run_in_threadpool(ctx.db.dedupe.claim, replay_keys(hook.path, delivery, body),
                                              hook.replay_window, queue)
        except DuctileError as err:
            return ctx.refused(err, f"a delivery to {hook.path}")
        if claimed.duplicate:
            by = "delivery id" if claimed.key and ":id:" in claimed.key else "signed body"
            log(_log, logging.INFO, f"webhook {hook.path}: replay (same {by} within replay_window); nothing queued",
                path=hook.path, delivery=delivery, first_job_id=claimed.job_id)
            return JSONResponse({"duplicate": True, "job_id": claimed.job_id, "status": "duplicate"}, status_code=200)
        job_id = claimed.job_id
        ctx.wake()
        log(_log, logging.INFO, f"webhook {hook.path}: queued {hook.plugin}/{hook.command}", job_id=job_id,
            plugin=hook.plugin, path=hook.path)
        return JSONResponse({"job_id": job_id, "status": "queued"}, status_code=202)

    return receive


def webhook_routes(ctx: ApiContext) -> list[Route]:
    return [Route(hook.path, _handler(ctx, hook, i), methods=["POST"])
            for i, hook in enumerate(ctx.runtime.config.webhooks)]
