"""``plugin run``: boot, then one job through the shared executor. The plugin gets its
stored state and its ``state_updates`` are merged back (within ``service.max_plugin_state``);
events it emits are recorded (not routed: pipelines run under ``serve``); vault compose is
audited in the state DB.

The job is recorded in the ledger as it starts (``JobQueue.start_now``), so a running
``serve`` counts it against the plugin's concurrency cap, and a plugin that is not safe to
run twice is refused here — naming the job that holds it — rather than run beside serve's.
Its outcome is recorded in one transaction with its state updates, as serve records its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ductile import strictjson
from ductile.config import LoadedConfig
from ductile.errors import BootRefused, UsageError
from ductile.hints import as_unit, this_command
from ductile.runtime.boot import Runtime, boot
from ductile.runtime.concurrency import concurrency_limit
from ductile.runtime.executor import Job, JobResult
from ductile.runtime.outcome import Outcome
from ductile.runtime.wiring import make_executor, record_boot
from ductile.state.db import StateDB, open_state
from ductile.state.jobs import Failed, Succeeded, TimedOut
from ductile.state.jobs import Outcome as QueueOutcome
from ductile.state.owner import process_token
from ductile.state.plugin_state import apply_state_updates


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


def ledger_outcome(outcome: Outcome) -> QueueOutcome:
    """A manual run has one attempt: succeeded, timed out, or failed (never retried)."""
    if outcome.status == "succeeded":
        return Succeeded(outcome.response.result if outcome.response is not None else None)
    if outcome.status == "timed_out":
        return TimedOut(outcome.reason)
    return Failed(outcome.reason or "failed", outcome.error.kind if outcome.error is not None else "failed")


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
    try:
        state = open_state(loaded.config.state.path)
        record_boot(runtime, state)
        executor = make_executor(runtime, state)
        known = plugin in runtime.plugins and plugin in runtime.config.plugins
        job_id = None
        if known:  # an unknown plugin is refused by the executor with its own message, off the ledger
            job_id = state.jobs.start_now(plugin, command, payload, limit=concurrency_limit(runtime, plugin),
                                          claimed_by=process_token()).id
        current = state.plugin_state.get_state(plugin)
        job = Job(plugin=plugin, command=command, payload=payload, state=current) if job_id is None else \
            Job(plugin=plugin, command=command, payload=payload, state=current, job_id=job_id)
        result = executor.run(job)
        if job_id is not None:
            result = _record(state, runtime, job_id, result)
    finally:
        runtime.close()
    return result, runtime


def _record(state: StateDB, runtime: Runtime, job_id: str, result: JobResult) -> JobResult:
    """The outcome, the state updates and the events in one transaction (as serve does)."""
    out = result.outcome
    response = out.response
    account = result.account
    found = runtime.plugins.get(result.job.plugin)
    mode = found.manifest.state_mode(result.job.command) if found is not None else "merge"
    with state.write():
        decision, refused = apply_state_updates(state, result.job.plugin, ledger_outcome(out),
                                                response.state_updates if response else None,
                                                limit=runtime.config.service.max_plugin_state, mode=mode)
        state.jobs.finish(job_id, decision, exit_code=out.exit_code, stderr_tail=out.stderr_tail or None,
                          account=(account.name if account.confined else "unconfined") if account else None,
                          uid=(account.uid if account.confined else None) if account else None,
                          warnings=out.warnings)
        if isinstance(decision, Succeeded) and response is not None:
            for event in response.events:
                state.events.record_event(event.type, event.payload, source_job_id=job_id, plugin=result.job.plugin,
                                          dedupe_key=event.dedupe_key)
    if refused is not None:  # the plugin answered ok, but its state was refused: the run failed
        return replace(result, outcome=replace(out, status="failed", terminal=True, error=refused))
    return result
