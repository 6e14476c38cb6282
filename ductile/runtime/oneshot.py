"""``plugin run``: boot, then one job through the shared executor. The plugin gets its
stored state and its ``state_updates`` are merged back; events it emits are recorded (not
routed: pipelines run under ``serve``); vault compose is audited in the state DB."""

from __future__ import annotations

import json
from typing import Any

from ductile.config import LoadedConfig
from ductile.errors import BootRefused, UsageError
from ductile.hints import as_unit, this_command
from ductile.runtime.boot import Runtime, boot
from ductile.runtime.executor import Job, JobResult
from ductile.runtime.wiring import make_executor
from ductile.state.db import open_state


def parse_payload(text: str) -> dict[str, Any]:
    """``--payload``: inline JSON, ``@FILE`` or ``-`` (stdin) for payloads too big for argv."""
    if text == "-":
        import sys

        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise UsageError(f"cannot read payload file: {err.strerror}", where=text[1:],
                             fix="give a readable JSON file after @") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--payload is not JSON: {err.msg} at character {err.pos}", where="--payload",
                         fix="pass a JSON object, e.g. --payload '{\"key\": 1}'") from None
    if not isinstance(value, dict):
        raise UsageError("--payload must be a JSON object", where="--payload", fix="wrap it in {...}")
    return value


def run_once(loaded: LoadedConfig, plugin: str, command: str, payload: dict[str, Any]) -> tuple[JobResult, Runtime]:
    try:
        runtime = boot(loaded)  # refuses before anything runs or is opened
    except BootRefused as err:
        if "no-capability+accounts" not in err.where:
            raise
        # The usual case is a shell, not the unit: say how to run it as the unit does.
        raise BootRefused(err.message, where=err.where,
                          fix=f"this process is the gateway for the job, so it needs the unit's capabilities: from a "
                              f"root shell run `{as_unit(this_command())}`; or {err.fix}") from None
    state = open_state(loaded.config.state.path)
    executor = make_executor(runtime, state)
    job = Job(plugin=plugin, command=command, payload=payload, state=state.plugin_state.get_state(plugin))
    result = executor.run(job)
    response = result.outcome.response
    if result.outcome.status == "succeeded" and response is not None:
        with state.write():
            if response.state_updates:
                state.plugin_state.merge_state(plugin, response.state_updates)
            for event in response.events:
                state.events.record_event(event.type, event.payload, plugin=plugin)
    return result, runtime
