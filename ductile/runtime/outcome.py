"""Turn what a plugin process did into a job outcome. Pure.

Order of questions: did the trampoline fail before the plugin ran (state_dir unreachable,
entrypoint or interpreter not executable by the account)? did the gateway cancel it
(shutdown)? did we kill it (timeout, output overflow)? is its answer a protocol v2 response? what does the answer say?
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ductile.errors import DuctileError, JobCancelled, PluginFailed, PluginTimeout, ProtocolError, SpawnFailed
from ductile.plugins import emits
from ductile.plugins.protocol import Response, decode_response, is_terminal
from ductile.privsep.spawnspec import ENV_TRAMPOLINE, SpawnSpec
from ductile.runtime.spawn import RawResult

Status = Literal["succeeded", "failed", "timed_out"]
EX_CONFIG = 78
_ENV_PREFIX = re.compile(rf"^(?:{re.escape(ENV_TRAMPOLINE)}|env): (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    status: Status
    terminal: bool
    response: Response | None
    error: DuctileError | None
    exit_code: int | None
    stderr_tail: str = field(default="", repr=False)
    warnings: tuple[str, ...] = ()  # what the gateway dropped from the answer (emits.screen)

    @property
    def reason(self) -> str:
        return self.error.one_line() if self.error else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "terminal": self.terminal, "exit_code": self.exit_code,
            "error": self.error.as_dict() if self.error else None,
            "result": self.response.result if self.response else None,
            "warnings": list(self.warnings),
        }


def screened(outcome: Outcome, *, max_events: int) -> Outcome:
    """``outcome`` with its events put through the emit rule (``plugins.emits``): events in the
    gateway's namespaces and past the cap are dropped, each reason one warning."""
    response = outcome.response
    if response is None or not response.events:
        return outcome
    kept, warnings = emits.screen(response.events, max_events=max_events)
    if not warnings:
        return outcome
    return replace(outcome, response=replace(response, events=tuple(kept)), warnings=outcome.warnings + tuple(warnings))


def last_line(data: bytes, limit: int = 300) -> str:
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def trampoline_failure(spec: SpawnSpec, raw: RawResult) -> SpawnFailed | None:
    """``env -C dir -- entrypoint`` exits 125/126/127 with its own message when the chdir
    or exec fails *as the account*; a plugin that ran would not print env's prefix."""
    if not spec.drops or raw.stdout or raw.returncode not in (125, 126, 127):
        return None
    m = _ENV_PREFIX.search(raw.stderr_tail.decode("utf-8", "replace"))
    if not m:
        return None
    detail = m.group(1).strip()
    who = f"account {spec.account} (uid {spec.uid})"
    if raw.returncode == 125 and "change directory" in detail:
        return SpawnFailed(f"state_dir {spec.workdir} is not reachable by {who}: {detail}",
                           where=f"accounts.{spec.account}.state_dir",
                           fix=f"provision it 0700 {spec.uid}:{spec.gid} with o+x (0711) parents; `ductile account verify` checks it")
    if raw.returncode == 126:
        return SpawnFailed(f"{spec.entrypoint} (or its #! interpreter) is not executable by {who}: {detail}",
                           where=spec.entrypoint,
                           fix="make the plugin directory and its parents o+x, the entrypoint o+rx, and use an interpreter "
                               "every account can reach (not one under /root)")
    if raw.returncode == 127:
        return SpawnFailed(f"{spec.entrypoint} or its #! interpreter was not found when run as {who}: {detail}",
                           where=spec.entrypoint, fix="check the entrypoint's #! line")
    return None


def classify(spec: SpawnSpec, raw: RawResult, plugin: str) -> Outcome:
    stderr = raw.stderr_tail.decode("utf-8", "replace")
    where = f"plugin {plugin}"
    failed = trampoline_failure(spec, raw)
    if failed is not None:
        return Outcome("failed", True, None, failed, raw.returncode, stderr)
    if raw.cancelled:
        cancelled = JobCancelled("stopped by the gateway before it finished (shutdown deadline)", where=where,
                                 fix="nothing: the job is re-queued without charging the attempt")
        return Outcome("failed", False, None, cancelled, raw.returncode, stderr)
    if raw.timed_out:
        timeout = PluginTimeout(f"timed out after {spec.timeout:g}s and was killed", where=where,
                              fix="raise plugins.<name>.timeouts.<command> or make the command faster")
        return Outcome("timed_out", False, None, timeout, raw.returncode, stderr)
    try:
        response = decode_response(raw.stdout, truncated=raw.stdout_truncated, limit=spec.max_stdout)
    except ProtocolError as err:
        if raw.returncode not in (0, None) and not raw.stdout:
            tail = last_line(raw.stderr_tail)
            err = ProtocolError(f"exited {raw.returncode} without a response" + (f"; stderr: {tail}" if tail else ""),
                                where=where, fix="see the job's stderr tail")
        else:
            err = ProtocolError(err.message, where=where, fix=err.fix)
        return Outcome("failed", raw.returncode == EX_CONFIG, None, err, raw.returncode, stderr)
    terminal = is_terminal(response, raw.returncode)
    if response.status == "error" or raw.returncode != 0:
        msg = response.error if isinstance(response.error, str) and response.error else (
            f"exited {raw.returncode}" if raw.returncode else "status error")
        if raw.returncode and response.status == "ok":
            msg = f"answered ok but exited {raw.returncode}"
        return Outcome("failed", terminal, response,
                       PluginFailed(str(msg)[:500], where=where, terminal=terminal), raw.returncode, stderr)
    return Outcome("succeeded", False, response, None, raw.returncode, stderr)
