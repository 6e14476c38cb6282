"""Who a job acts for, and what a pipeline may start on its behalf. Pure.

Every job records its *trigger* (what started it) and its *authority* (what the root of its
chain was allowed to do). A job started by a pipeline inherits the authority of the job
whose event started it, so the whole chain acts for whoever started the first job:

    root trigger                    read step    write step on plugin P
    schedule, webhook:<path>, cli   queued       queued   (the operator configured it)
    api:<token> with '*'            queued       queued
    api:<token> with 'P:rw'         queued       queued
    api:<token> with 'P:ro' / none  queued       denied: pipeline.denied in the ledger
    not recorded (older job row)    queued       denied   (fail closed)

A step whose command type is unknown (plugin missing, command undeclared) counts as a
write. Without this rule a token scoped ``echo:ro`` could post ``echo/poll`` and have the
pipeline ``echo.done -> notify`` run ``notify handle``, a write, with its payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ductile.serve.scopes import Principal

SCHEDULE = "schedule"
CLI = "cli"


@dataclass(frozen=True)
class Authority:
    """``scopes`` None: the operator's own authority (schedules, webhooks, the CLI)."""

    trigger: str
    scopes: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "scopes": None if self.scopes is None else list(self.scopes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Authority | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("trigger"), str):
            return None
        scopes = data.get("scopes")
        if scopes is None:
            return cls(data["trigger"])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            return None
        return cls(data["trigger"], tuple(scopes))


def operator(trigger: str) -> Authority:
    return Authority(trigger)


def webhook(path: str) -> Authority:
    return Authority(f"webhook:{path}")


def api_token(principal: Principal) -> Authority:
    return Authority(f"api:{principal.name}", tuple(principal.scopes))


def pipeline_trigger(parent_job_id: str) -> str:
    return f"pipeline:{parent_job_id}"


def may_start(authority: Authority | None, plugin: str, command: str, command_type: str | None) -> str | None:
    """None when a pipeline may queue ``plugin command`` for this chain, else why not."""
    if command_type == "read":
        return None
    what = f"{plugin} {command} is a {command_type or 'write (unknown type)'} command"
    if authority is None:
        return f"{what} and the chain's root trigger is not recorded (the job predates authority tracking)"
    if authority.scopes is None:
        return None
    if Principal(authority.trigger, authority.scopes).can_write(plugin):
        return None
    held = ", ".join(authority.scopes) or "no scopes"
    return f"{what} and the chain was started by {authority.trigger}, which holds {held}, not write scope on {plugin}"


S = TypeVar("S")


def authorize(steps: Iterable[S], authority: Authority | None, plugin_of: Callable[[S], str],
              command_of: Callable[[S], str], command_type: Callable[[str, str], str | None]
              ) -> tuple[list[S], list[tuple[S, str]]]:
    """Split pipeline steps into (may be queued, [(denied, reason)])."""
    allowed: list[S] = []
    denied: list[tuple[S, str]] = []
    for step in steps:
        plugin, command = plugin_of(step), command_of(step)
        reason = may_start(authority, plugin, command, command_type(plugin, command))
        if reason is None:
            allowed.append(step)
        else:
            denied.append((step, reason))
    return allowed, denied
