"""``plugin run``: boot, then one job through the shared executor. No state DB is
written here beyond what the plugin's own account writes; the response is returned."""

from __future__ import annotations

import json
from typing import Any

from ductile.config import LoadedConfig
from ductile.errors import UsageError
from ductile.runtime.boot import Runtime, boot
from ductile.runtime.executor import Job, JobResult
from ductile.runtime.wiring import make_executor


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
    runtime = boot(loaded)
    executor = make_executor(runtime)
    return executor.run(Job(plugin=plugin, command=command, payload=payload)), runtime
