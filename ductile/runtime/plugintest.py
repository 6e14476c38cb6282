"""``ductile plugin test``: run a plugin's commands confined, against its fixtures, and say
plainly what is wrong with each answer.

A fixture is ``<plugin dir>/fixtures/<command>.json``::

    {"payload": {...}, "state": {...}, "event": {...},         # what the command is sent
     "expect": {"status": "ok", "result": {...}, "events": ["name.done"]}}

Every part is optional: ``state`` defaults to ``{}`` (a test does not read or change the
plugin's stored state), a ``handle`` without ``event`` gets the ``api.trigger`` envelope as in
production, ``expect.status`` defaults to ``ok``, ``expect.result`` is matched as a subset
(every key given must be there with that value) and ``expect.events`` lists the event types
the answer must carry.

Each run goes through the one executor — the same gate, resolve, attestation, vault and
spawn as ``serve`` — so a plugin that passes here passes there. Nothing it answers is
recorded: no state update, no event, no job. ``judge`` is the pure part.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ductile import strictjson
from ductile.config import LoadedConfig
from ductile.errors import PluginError, UsageError
from ductile.runtime.boot import Runtime, boot
from ductile.runtime.executor import Job, JobResult
from ductile.runtime.wiring import make_executor
from ductile.state.db import open_state

FIXTURE_KEYS = frozenset({"payload", "state", "event", "expect"})
EXPECT_KEYS = frozenset({"status", "result", "events"})


@dataclass(frozen=True)
class Case:
    command: str
    payload: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    expect: dict[str, Any] = field(default_factory=dict)
    source: str = "--payload"   # the fixture file, or --payload / {}


@dataclass(frozen=True)
class Verdict:
    case: Case
    problems: tuple[str, ...]
    result: JobResult
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.case.command, "fixture": self.case.source, "passed": self.passed,
                "problems": list(self.problems), "seconds": round(self.seconds, 3), "run": self.result.as_dict()}


def _subset(expected: Any, actual: Any, at: str) -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{at} should be an object, got {json.dumps(actual)[:80]}"]
        out: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{at}.{key} is missing")
            else:
                out += _subset(value, actual[key], f"{at}.{key}")
        return out
    if expected != actual:
        return [f"{at} should be {json.dumps(expected)[:80]}, got {json.dumps(actual)[:80]}"]
    return []


def judge(case: Case, result: JobResult) -> list[str]:
    """What is wrong with this run's answer, one line each (empty: it passed)."""
    out = result.outcome
    problems: list[str] = []
    want = case.expect.get("status", "ok")
    got = "ok" if out.status == "succeeded" else ("error" if out.response is not None else out.status)
    if got != want:
        why = f": {out.error.one_line()}" if out.error is not None else ""
        problems.append(f"status should be {want}, got {got}{why}")
    if out.response is None:
        return problems  # no answer to check further (the reason is above)
    if "result" in case.expect:
        problems += _subset(case.expect["result"], out.response.result, "result")
    if "events" in case.expect:
        wanted = sorted(case.expect["events"])
        emitted = sorted(e.type for e in out.response.events)
        if wanted != emitted:
            problems.append(f"events should be {wanted}, got {emitted}")
    problems += [f"the gateway {w}" for w in out.warnings]
    return problems


def _fixture(path: str, command: str) -> Case:
    try:
        with open(path, encoding="utf-8") as fh:
            data = strictjson.loads(fh.read())
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read fixture: {err}", where=path, fix="make it a readable UTF-8 JSON file") from None
    except (strictjson.NotJson, strictjson.JsonRefused) as err:
        raise UsageError(f"fixture is not usable JSON: {err.reason}", where=path,
                         fix='write {"payload": {...}, "expect": {"status": "ok"}}') from None
    if not isinstance(data, dict) or set(data) - FIXTURE_KEYS:
        extra = sorted(set(data) - FIXTURE_KEYS) if isinstance(data, dict) else []
        raise UsageError(f"fixture must be an object of {', '.join(sorted(FIXTURE_KEYS))}"
                         + (f" (unknown: {', '.join(extra)})" if extra else ""), where=path,
                         fix='write {"payload": {...}, "expect": {"status": "ok"}}')
    expect = data.get("expect") or {}
    if not isinstance(expect, dict) or set(expect) - EXPECT_KEYS:
        raise UsageError(f"fixture expect must be an object of {', '.join(sorted(EXPECT_KEYS))}", where=path,
                         fix='write "expect": {"status": "ok", "result": {...}, "events": ["name.done"]}')
    if expect.get("status", "ok") not in ("ok", "error"):
        raise UsageError("fixture expect.status must be ok or error", where=path, fix='write "status": "ok"')
    if "events" in expect and not (isinstance(expect["events"], list)
                                   and all(isinstance(e, str) for e in expect["events"])):
        raise UsageError("fixture expect.events must be a list of event types", where=path,
                         fix='write "events": ["name.done"]')
    for key in ("payload", "state", "event"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise UsageError(f"fixture {key} must be an object", where=path, fix=f'write "{key}": {{...}}')
    return Case(command, data.get("payload") or {}, data.get("state") or {}, data.get("event"), expect, path)


def cases(runtime: Runtime, name: str, command: str | None, payload: dict[str, Any] | None) -> list[Case]:
    """The runs to make: one command (its fixture, or --payload) or every command with a fixture."""
    if name not in runtime.config.plugins:
        raise PluginError(f"plugin '{name}' is not configured, so it has no account to run as",
                          where=runtime.loaded.path or "config", fix=f"add `plugins: {{{name}: {{run_as: default}}}}` "
                          "(or another account) to the config, then test again")
    plugin = runtime.plugins.get(name)
    if plugin is None:
        raise PluginError(f"plugin '{name}' was not found in plugin_roots or was refused", where=f"plugins.{name}",
                          fix="`ductile plugin list` shows what was found and why not")
    fixtures = os.path.join(plugin.directory, "fixtures")
    declared = plugin.manifest.command_names
    if command is not None:
        if command not in declared:
            raise UsageError(f"plugin {name} has no command '{command}' (it has: {', '.join(declared)})",
                             where="--command", fix="use one of its commands")
        path = os.path.join(fixtures, f"{command}.json")
        if payload is not None:
            return [Case(command, payload)]
        return [_fixture(path, command)] if os.path.isfile(path) else [Case(command, {}, source="{}")]
    found = [c for c in declared if os.path.isfile(os.path.join(fixtures, f"{c}.json"))]
    if not found:
        raise UsageError(f"plugin {name} has no fixtures in {fixtures}", where=f"plugin test {name}",
                         fix="add fixtures/<command>.json (ductile plugin new writes them) or give --command")
    if payload is not None:
        raise UsageError("--payload needs --command", where="--payload", fix="add --command CMD")
    return [_fixture(os.path.join(fixtures, f"{c}.json"), c) for c in found]


def run_fixtures(loaded: LoadedConfig, name: str, command: str | None,
                payload: dict[str, Any] | None) -> tuple[list[Verdict], Runtime]:
    runtime = boot(loaded)  # refuses before anything runs
    todo = cases(runtime, name, command, payload)
    state = open_state(loaded.config.state.path)
    try:
        executor = make_executor(runtime, state)
        verdicts = []
        for case in todo:
            started = time.monotonic()
            result = executor.run(Job(plugin=name, command=case.command, payload=case.payload, event=case.event,
                                      state=case.state, context={"test": True}))
            verdicts.append(Verdict(case, tuple(judge(case, result)), result, time.monotonic() - started))
        return verdicts, runtime
    finally:
        state.close()
