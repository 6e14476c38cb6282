"""Event routing: which pipeline steps an event starts, and when a chain must stop. Pure.

``on.event`` matches an event type exactly, or by prefix when it ends in ``.*`` (``echo.*``
matches ``echo.done`` and ``echo.a.b``, not ``echo``); ``on.from``, when given, also
requires the event's source plugin to be one of those named, so another plugin emitting
``lowly.done`` does not start a pipeline bound to ``lowly``. Each matching step becomes one
downstream job (``handle`` unless the step names a command) carrying the event. A job
started by an event sits one hop deeper than the job that emitted it; a hop past
``service.max_event_depth`` is not enqueued but reported, so a loop stops and says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ductile.config.model import Config, PipelineConfig, PipelineOn

DEPTH_EXCEEDED = "pipeline.depth_exceeded"
DENIED = "pipeline.denied"
DEDUPLICATED = "pipeline.deduplicated"


def route_key(plugin: str, command: str, dedupe_key: str) -> str:
    """The dedupe key of one step: the same event key routed to another step is another job."""
    import hashlib

    return f"route:{plugin}:{command}:{hashlib.sha256(dedupe_key.encode()).hexdigest()}"


def matches(pattern: str, event_type: str) -> bool:
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1]) and len(event_type) > len(pattern) - 1
    return pattern == event_type


def starts(on: PipelineOn, event_type: str, source_plugin: str | None) -> bool:
    """Whether an event of ``event_type`` emitted by ``source_plugin`` starts the pipeline."""
    if not matches(on.event, event_type):
        return False
    return not on.sources or source_plugin in on.sources


@dataclass(frozen=True)
class Downstream:
    """One job an event starts."""

    pipeline: str
    plugin: str
    command: str
    payload: dict[str, Any]
    event: dict[str, Any]
    depth: int
    max_attempts: int

    @property
    def dedupe_key(self) -> str | None:
        key = self.event.get("dedupe_key")
        return key if isinstance(key, str) else None


@dataclass(frozen=True)
class Stopped:
    """A step not enqueued because the chain is too deep."""

    pipeline: str
    plugin: str
    event_type: str
    depth: int
    limit: int

    def as_payload(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "step": self.plugin, "event_type": self.event_type, "depth": self.depth,
                "max_event_depth": self.limit,
                "why": f"event chain reached depth {self.depth} > service.max_event_depth {self.limit}; "
                       "raise max_event_depth or break the loop in the pipelines"}


def route(config: Config, *, event_id: str, event_type: str, payload: Any, source_job_id: str | None,
          source_plugin: str | None, source_depth: int, dedupe_key: str | None = None, timestamp: str | None = None,
          pipelines: Iterable[PipelineConfig] | None = None) -> tuple[list[Downstream], list[Stopped]]:
    """The downstream jobs of one stored event, and the steps stopped by the depth limit.

    The event a job carries holds ductile's fields and upstream's names for the same facts
    (``event_id``, ``source``, ``dedupe_key``, ``timestamp``), so plugins written for either
    read it unchanged."""
    depth = source_depth + 1
    limit = config.service.max_event_depth
    jobs: list[Downstream] = []
    stopped: list[Stopped] = []
    for pipe in config.pipelines if pipelines is None else pipelines:
        if not starts(pipe.on, event_type, source_plugin):
            continue
        for step in pipe.steps:
            if depth > limit:
                stopped.append(Stopped(pipe.name, step.uses, event_type, depth, limit))
                continue
            pc = config.plugins.get(step.uses)
            event = {"id": event_id, "type": event_type, "payload": payload, "source_job_id": source_job_id,
                     "source_plugin": source_plugin, "pipeline": pipe.name, "depth": depth,
                     "event_id": event_id, "source": source_plugin, "dedupe_key": dedupe_key}
            if timestamp is not None:
                event["timestamp"] = timestamp
            jobs.append(Downstream(pipe.name, step.uses, step.command, payload if isinstance(payload, dict) else {},
                                   event, depth, pc.retry.max_attempts if pc is not None else 1))
    return jobs, stopped
