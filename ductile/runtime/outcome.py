"""Turn what a plugin process did into a job outcome. Pure.

Order of questions: did the plugin vanish from under the gateway? did the trampoline fail before the plugin ran (state_dir unreachable,
entrypoint or interpreter not executable by the account)? did the gateway cancel it
(shutdown)? did we kill it (timeout, output overflow)? is its answer a protocol v2 response? what does the answer say?
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ductile.errors import (
    DuctileError,
    GatewayFault,
    JobCancelled,
    PluginFailed,
    PluginTimeout,
    ProtocolError,
    SpawnFailed,
)
from ductile.plugins import emits
from ductile.plugins.protocol import Response, decode_response, is_terminal
from ductile.privsep.spawnspec import (EXIT_HANDSHAKE, EXIT_LIMIT, EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_TMPDIR,
                                       EXIT_WORKDIR, TRAMPOLINE_NAME, SpawnSpec)
from ductile.runtime.spawn import RawResult

Status = Literal["succeeded", "failed", "timed_out"]
EX_CONFIG = 78
_TRAMPOLINE_EXITS = (EXIT_HANDSHAKE, EXIT_LIMIT, EXIT_TMPDIR, EXIT_WORKDIR, EXIT_NOEXEC, EXIT_NOTFOUND)
# "ductile-spawn: <what>" from the script, "ductile-spawn: 1: exec: <path>: <why>" from sh
_TRAMPOLINE_LINE = re.compile(rf"^{re.escape(TRAMPOLINE_NAME)}: (?:\d+: )?(.*)$", re.MULTILINE)


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
    """The trampoline exits with its own status and a ``ductile-spawn:`` line when a step
    before the plugin fails *as the account* (see spawnspec); a plugin that ran and
    answered would have written stdout."""
    if raw.stdout or raw.returncode not in _TRAMPOLINE_EXITS:
        return None
    m = _TRAMPOLINE_LINE.search(raw.stderr_tail.decode("utf-8", "replace"))
    if not m:
        return None
    detail = m.group(1).strip()
    who = f"account {spec.account} (uid {spec.uid})" if spec.drops else "the gateway (unconfined)"
    code = raw.returncode
    if code == EXIT_WORKDIR:
        where = f"accounts.{spec.account}.state_dir" if spec.drops else spec.workdir
        return SpawnFailed(f"state_dir {spec.workdir} is not reachable by {who}: {detail}", where=where,
                           fix=f"provision it 0700 {spec.uid}:{spec.gid} with o+x (0711) parents; `ductile account verify` checks it")
    if code == EXIT_TMPDIR:
        return SpawnFailed(f"the private TMPDIR of {who} cannot be made: {detail}", where=f"{spec.workdir}/tmp",
                           fix=f"remove whatever is at {spec.workdir}/tmp (it must be a directory the account owns)")
    if code == EXIT_LIMIT:
        return SpawnFailed(f"a resource limit could not be applied for {who}: {detail}", where=spec.entrypoint,
                           fix="lower plugins.<name>.limits (an rlimit can only be lowered)")
    if code == EXIT_HANDSHAKE:
        return SpawnFailed("the plugin was not started: the gateway did not complete the start handshake",
                           where=spec.entrypoint, fix="see the gateway's log for the error before this one")
    if code == EXIT_NOEXEC:
        return SpawnFailed(f"{spec.entrypoint} (or its #! interpreter) is not executable by {who}: {detail}",
                           where=spec.entrypoint,
                           fix="make the plugin directory and its parents o+x, the entrypoint o+rx, and use an interpreter "
                               "every account can reach (not one under /root)")
    if not os.path.lexists(spec.entrypoint):  # removed after boot: not the #! line (see vanished)
        return None
    return SpawnFailed(f"the #! interpreter of {spec.entrypoint} was not found when run as {who}: {detail}",
                       where=spec.entrypoint, fix="check the entrypoint's #! line names an interpreter that exists")


def vanished(spec: SpawnSpec, raw: RawResult, plugin: str) -> GatewayFault | None:
    """The entrypoint did not exist when it was exec'd (exit 127, or exit 126/ENOENT from
    the trampoline) and still does not: the plugin was removed under the gateway."""
    if raw.stdout or raw.returncode not in (126, 127) or os.path.lexists(spec.entrypoint):
        return None
    return GatewayFault(f"plugin {plugin}'s entrypoint {spec.entrypoint} is missing (it was there when the gateway "
                        "started)", where=f"plugins.{plugin}",
                        fix=f"restore {spec.entrypoint} (jobs are retried meanwhile), or disable plugins.{plugin} and "
                            "restart the gateway")


def classify(spec: SpawnSpec, raw: RawResult, plugin: str) -> Outcome:
    stderr = raw.stderr_tail.decode("utf-8", "replace")
    where = f"plugin {plugin}"
    gone = vanished(spec, raw, plugin)
    if gone is not None:
        return Outcome("failed", False, None, gone, raw.returncode, stderr)
    failed = trampoline_failure(spec, raw)
    if failed is not None:
        return Outcome("failed", True, None, failed, raw.returncode, stderr)
    if raw.cancelled:
        cancelled = JobCancelled("stopped by the gateway before it finished (shutdown deadline)", where=where,
                                 fix="nothing: the job is re-queued without charging the attempt")
        return Outcome("failed", False, None, cancelled, raw.returncode, stderr)
    if raw.oom_killed and raw.returncode != 0:
        oom = PluginFailed(f"killed by its memory limit ({spec.confinement.limits.get('memory', 'memory.max')})",
                           where=f"plugins.{plugin}.limits.memory", terminal=False)
        return Outcome("failed", False, None, oom, raw.returncode, stderr)
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
