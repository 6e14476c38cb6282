"""``plugin run``: boot, then one job through the shared executor. The plugin gets its
stored state and its ``state_updates`` are merged back; events it emits are recorded (not
routed: pipelines run under ``serve``); vault compose is audited in the state DB."""

from __future__ import annotations

from typing import Any

from ductile import strictjson
from ductile.config import LoadedConfig
from ductile.errors import UsageError
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
        value = strictjson.loads(text)
    except strictjson.NotJson as err:
        raise UsageError(f"--payload is not JSON: {err.reason}", where="--payload",
                         fix="pass a JSON object, e.g. --payload '{\"key\": 1}'") from None
    except strictjson.JsonRefused as err:
        raise UsageError(f"--payload refused: {err.reason}", where="--payload",
                         fix="use finite numbers, integers of at most "
                             f"{strictjson.MAX_INT_DIGITS} digits and at most {strictjson.MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise UsageError("--payload must be a JSON object", where="--payload", fix="wrap it in {...}")
    return value


def run_once(loaded: LoadedConfig, plugin: str, command: str, payload: dict[str, Any]) -> tuple[JobResult, Runtime]:
    runtime = boot(loaded)  # refuses before anything runs or is opened
    state = open_state(loaded.config.state.path)
    executor = make_executor(runtime, state)
    job = Job(plugin=plugin, command=command, payload=payload, state=state.plugin_state.get_state(plugin))
    result = executor.run(job)
    response = result.outcome.response
    if result.outcome.status == "succeeded" and response is not None:
        found = runtime.plugins.get(plugin)
        mode = found.manifest.state_mode(command) if found is not None else "merge"
        with state.write():
            if response.state_updates:
                state.plugin_state.apply(plugin, response.state_updates, mode)
            for event in response.events:
                state.events.record_event(event.type, event.payload, plugin=plugin, dedupe_key=event.dedupe_key)
    return result, runtime
