"""Write one run's consequences in ONE state transaction: the job's new status, the plugin's
state updates, the events it emitted and the downstream jobs those events start.

One transaction because each part depends on the others: a job recorded ``succeeded``
whose ``state_updates`` were lost would run with stale state next time, and an event
stored without its pipeline jobs would never be handled. A ``kill -9`` leaves either
all of it or none of it (the job then stays ``running`` and is recovered at boot).

State updates and plugin events are taken from successful runs only: a failed run is
retried, and its retry will say again what it wants to change. State updates that would
grow the plugin's state past ``service.max_plugin_state`` fail the run instead. What one
answer can set in motion is bounded: the executor already dropped events in the gateway's
namespaces and past ``service.max_events_per_response``; here pipeline jobs past
``service.max_routed_jobs_per_response`` are not queued, and a step the chain's root trigger
had no authority for is not queued either (``ductile.serve.authority``). Each drop is a
warning stored on the job, so the ledger says what was refused and why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ductile.config.model import Config
from ductile.runtime.executor import JobResult
from ductile.serve.authority import Authority, authorize, pipeline_trigger
from ductile.serve.logs import log
from ductile.serve.pipelines import DEDUPLICATED, DENIED, DEPTH_EXCEEDED, Downstream, route, route_key
from ductile.state.breakers import Breaker, after_run, opened
from ductile.state.codec import iso
from ductile.state.db import StateDB
from ductile.state.jobs import Job as QueuedJob
from ductile.state.jobs import Dead, Deferred, Outcome, Succeeded
from ductile.state.plugin_state import apply_state_updates

_log = logging.getLogger("ductile.pipelines")


@dataclass
class Recorded:
    status: str
    events: list[str] = field(default_factory=list)      # event types stored
    downstream: list[str] = field(default_factory=list)  # job ids enqueued by pipelines
    stopped: int = 0                                      # steps refused by max_event_depth
    capped: int = 0                                       # steps past max_routed_jobs_per_response
    denied: int = 0                                       # steps the chain's authority may not start
    deduplicated: int = 0                                 # steps whose dedupe_key was routed within the ttl
    warnings: list[str] = field(default_factory=list)    # what the gateway dropped, one line each
    breaker: tuple[Breaker | None, Breaker] | None = None  # (before, after) when a scheduled run moved it


def identity(result: JobResult) -> tuple[str | None, int | None]:
    """(account, uid) the run used: the account it dropped to, or the gateway's own uid."""
    acct = result.account
    if acct is None:
        return None, None
    if acct.confined:
        return acct.name, acct.uid
    return "unconfined", os.geteuid()


CommandType = Callable[[str, str], "str | None"]
StateMode = Callable[[str, str], str]


def _unknown(plugin: str, command: str) -> str | None:
    return None


def _merge(plugin: str, command: str) -> str:
    return "merge"


def store_event(db: StateDB, config: Config, rec: Recorded, type_: str, payload: Any, source: QueuedJob,
                command_type: CommandType = _unknown, dedupe_key: str | None = None) -> None:
    """Store one event and enqueue what it starts (call inside a write block).

    A step the chain's authority may not start is not queued: ``pipeline.denied`` says
    why. A step whose event ``dedupe_key`` was already routed to it within
    ``service.dedupe_ttl`` (and did not fail) is not queued: ``pipeline.deduplicated`` says
    so. Jobs past ``service.max_routed_jobs_per_response`` for this answer are counted,
    not queued. A queued job inherits the source job's authority."""
    event_id = db.events.record_event(type_, payload, source_job_id=source.id, plugin=source.plugin,
                                      depth=source.event_depth, dedupe_key=dedupe_key)
    rec.events.append(type_)
    jobs, stopped = route(config, event_id=event_id, event_type=type_, payload=payload, source_job_id=source.id,
                          source_plugin=source.plugin, source_depth=source.event_depth, dedupe_key=dedupe_key,
                          timestamp=iso(time.time()))
    root = Authority.from_dict(source.authority)
    jobs, denied = authorize(jobs, root, lambda d: d.plugin, lambda d: d.command, command_type)
    for d, why in denied:
        db.events.record_event(DENIED, {"pipeline": d.pipeline, "step": d.plugin, "command": d.command,
                                        "event_type": type_, "root_trigger": root.trigger if root else None,
                                        "why": why},
                               source_job_id=source.id, plugin=source.plugin, depth=source.event_depth)
        rec.denied += 1
        log(_log, logging.WARNING, f"pipeline {d.pipeline} denied: {why}", job_id=source.id, event_type=type_,
            pipeline=d.pipeline)
    cap = config.service.max_routed_jobs_per_response
    for d in jobs:
        if len(rec.downstream) >= cap:
            rec.capped += 1
            continue

        def queue(d: Downstream = d) -> str:
            return db.jobs.enqueue(d.plugin, d.command, d.payload, event=d.event, max_attempts=d.max_attempts,
                                   parent_job_id=source.id, event_depth=d.depth, event_id=event_id,
                                   trigger=pipeline_trigger(source.id), authority=source.authority)

        if d.dedupe_key is None:
            rec.downstream.append(queue())
            continue
        claimed = db.dedupe.claim([route_key(d.plugin, d.command, d.dedupe_key)], config.service.dedupe_ttl, queue,
                                  unless_failed=True)
        if not claimed.duplicate and claimed.job_id is not None:
            rec.downstream.append(claimed.job_id)
            continue
        db.events.record_event(DEDUPLICATED, {"pipeline": d.pipeline, "step": d.plugin, "command": d.command,
                                              "event_type": type_, "dedupe_key": d.dedupe_key,
                                              "first_job_id": claimed.job_id,
                                              "why": f"dedupe_key already routed to {d.plugin} {d.command} within "
                                                     f"service.dedupe_ttl ({config.service.dedupe_ttl:g}s)"},
                               source_job_id=source.id, plugin=source.plugin, depth=source.event_depth)
        rec.deduplicated += 1
        log(_log, logging.INFO, f"pipeline {d.pipeline}: {d.plugin} {d.command} not queued again for dedupe_key "
            f"{d.dedupe_key!r}", job_id=source.id, first_job_id=claimed.job_id)
    for s in stopped:
        db.events.record_event(DEPTH_EXCEEDED, s.as_payload(), source_job_id=source.id, plugin=source.plugin,
                               depth=source.event_depth)
        rec.stopped += 1
        log(_log, logging.WARNING, f"pipeline {s.pipeline} stopped: {s.as_payload()['why']}",
            job_id=source.id, event_type=s.event_type, pipeline=s.pipeline)


def record_run(db: StateDB, config: Config, job: QueuedJob, result: JobResult, decision: Outcome,
               gateway_events: Sequence[tuple[str, dict[str, Any]]] = (), *,
               command_type: CommandType = _unknown, state_mode: StateMode = _merge) -> Recorded:
    """``state_mode(plugin, command)``: merge, or replace for upstream's mirror_object facts."""
    account, uid = identity(result)
    out = result.outcome
    with db.write():
        response = out.response
        decision, _ = apply_state_updates(db, job.plugin, decision, response.state_updates if response else None,
                                          limit=config.service.max_plugin_state,
                                          mode=state_mode(job.plugin, job.command))
        rec = Recorded("running", warnings=list(out.warnings))
        emitted: list[tuple[str, Any, str | None]] = [(t, p, None) for t, p in gateway_events]
        if isinstance(decision, Succeeded) and response is not None:
            emitted += [(e.type, e.payload, e.dedupe_key) for e in response.events]
        for type_, payload, key in emitted:
            store_event(db, config, rec, type_, payload, job, command_type, key)
        if rec.capped:
            rec.warnings.append(f"did not queue {rec.capped} pipeline job(s) past service.max_routed_jobs_per_response "
                                f"({config.service.max_routed_jobs_per_response})")
        rec.status = db.jobs.finish(job.id, decision, exit_code=out.exit_code, account=account, uid=uid,
                                    stderr_tail=out.stderr_tail or None, warnings=rec.warnings)
        lifecycle = lifecycle_event(job, rec.status, decision)
        if lifecycle is not None:
            store_event(db, config, rec, lifecycle[0], lifecycle[1], job, command_type)
        rec.breaker = record_breaker(db, config, rec, job, decision)
    return rec


BREAKER_OPENED, BREAKER_CLOSED = "plugin.breaker_opened", "plugin.breaker_closed"


def record_breaker(db: StateDB, config: Config, rec: Recorded, job: QueuedJob,
                   decision: Outcome) -> tuple[Breaker | None, Breaker] | None:
    """Move the plugin's breaker after a run the scheduler started (call inside the write
    block that records the run); an opening or closing is stored as an event, routed like
    any other (a pipeline may notify on ``plugin.breaker_opened``)."""
    if job.trigger != "schedule" or getattr(decision, "reason", None) == SUPERSEDED or isinstance(decision, Deferred):
        return None  # a gateway fault is not the plugin's failure
    pc = config.plugins.get(job.plugin)
    if pc is None:
        return None
    before = db.breakers.get(job.plugin)
    after = after_run(before, job.plugin, ok=isinstance(decision, Succeeded), error=getattr(decision, "error", None),
                      threshold=pc.breaker.threshold, reset_after=pc.breaker.reset_after, now=time.time())
    if before == after or (before is None and after == Breaker(job.plugin)):
        return None
    db.breakers.put(after)
    if opened(before, after):
        store_event(db, config, rec, BREAKER_OPENED, {**after.as_dict(), "job_id": job.id,
                                                      "reset_after": pc.breaker.reset_after}, job)
    elif after.state == "closed" and before is not None and before.state != "closed":
        store_event(db, config, rec, BREAKER_CLOSED, {"plugin": job.plugin, "job_id": job.id}, job)
    return before, after


LIFECYCLE = {"failed": "job.failed", "timed_out": "job.timed_out", "dead": "job.dead"}
SUPERSEDED = "superseded"     # a run an if_running: cancel schedule replaced: the operator's policy, not a failure
LIFECYCLE_ERROR_MAX = 1000    # characters of the error a lifecycle event carries


def lifecycle_event(job: QueuedJob, status: str, decision: Outcome) -> tuple[str, dict[str, Any]] | None:
    """The event a job's final failure emits (``job.failed``, ``job.timed_out``, ``job.dead``),
    or None. Pure. The payload names the job and says why it ended — never its payload,
    result, stderr or secrets. Routed like any event (``from:`` matches the failed job's
    plugin), one hop deeper than the job, so a hook whose own job fails hooks again only
    until ``service.max_event_depth``."""
    kind = LIFECYCLE.get(status)
    if kind is None or getattr(decision, "reason", None) == SUPERSEDED:
        return None
    error = getattr(decision, "error", None)
    return kind, {"plugin": job.plugin, "command": job.command, "job_id": job.id, "status": status,
                  "attempt": job.attempt, "max_attempts": job.max_attempts, "trigger": job.trigger,
                  "reason": getattr(decision, "reason", None) or {"dead": "attempts_exhausted",
                                                                   "timed_out": "timeout"}.get(status, status),
                  "error": error[:LIFECYCLE_ERROR_MAX] if isinstance(error, str) else None}


def record_recovered(db: StateDB, config: Config, job_id: str, command_type: CommandType = _unknown) -> bool:
    """The lifecycle event of a job that recovery (a crashed gateway, a killed ``plugin run``)
    settled ``dead``: it ended for good too, and its hooks must hear of it. True when one was
    stored."""
    with db.write():
        job = db.jobs.get(job_id)
        if job is None or job.status != "dead":
            return False
        found = lifecycle_event(job, "dead", Dead(job.last_error or "recovered after a crash", "recovered_after_crash"))
        if found is None:
            return False
        store_event(db, config, Recorded("dead"), found[0], found[1], job, command_type)
    return True
