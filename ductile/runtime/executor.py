"""One job, start to finish — the single path every command that runs a plugin uses:

    resolve -> bind fingerprint -> compose secrets -> spawn spec -> spawn -> decode -> outcome

``plugin run`` calls ``Executor.run`` once; ``serve``'s dispatcher calls it for every job;
``account verify`` builds its probes through the same ``build_spawn_spec`` + ``spawn``.
A second spawn path would be a second door in the wall: don't add one.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ductile.config.model import PluginConfig
from ductile.errors import AccountDropFailed, AccountRefused, DuctileError, GatewayFault, PluginError
from ductile.plugins.discovery import Plugin
from ductile.plugins.protocol import build_request
from ductile.privsep.accounts import ResolvedAccount, resolve_account
from ductile.privsep.fingerprint import Binding
from ductile.privsep.spawnspec import SpawnSpec, build_spawn_spec
from ductile.runtime.boot import Runtime
from ductile.runtime.outcome import Outcome, classify, screened
from ductile.runtime.spawn import spawn

log = logging.getLogger("ductile.runtime")


@dataclass(frozen=True)
class Job:
    plugin: str
    command: str
    payload: dict[str, Any] = field(default_factory=dict)
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    event: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    job: Job
    outcome: Outcome
    account: ResolvedAccount | None
    spec: SpawnSpec | None
    pid: int | None = None
    secret_names: tuple[str, ...] = ()
    binding: Binding | None = None

    def as_dict(self) -> dict[str, Any]:
        r = self.outcome.response
        acct = self.account
        return {
            "job_id": self.job.job_id, "plugin": self.job.plugin, "command": self.job.command, "pid": self.pid,
            "account": {"name": acct.name, "uid": acct.uid, "gid": acct.gid, "source": acct.source} if acct else None,
            "outcome": self.outcome.as_dict(),
            "events": [{"type": e.type, "payload": e.payload, "dedupe_key": e.dedupe_key} for e in r.events] if r else [],
            "state_updates": dict(r.state_updates) if r else {},
            "logs": [{"level": lg.level, "message": lg.message} for lg in r.logs] if r else [],
            "secrets_delivered": list(self.secret_names),
            "lock": {"state": self.binding.state, "downgraded_from": self.binding.downgraded_from,
                     "reason": self.binding.reason} if self.binding else None,
            "stderr_tail": self.outcome.stderr_tail[-4096:],
        }


def plugin_missing(plugin: Plugin) -> GatewayFault | None:
    """A plugin found at boot whose directory or entrypoint is gone now: the host changed
    under the gateway (a deploy in progress, an unmounted disk), not the plugin's answer —
    so the job is deferred and retried, not failed for good."""
    for path, what in ((plugin.directory, "directory"), (plugin.entrypoint, "entrypoint")):
        if not os.path.lexists(path):
            return GatewayFault(f"plugin {plugin.name}'s {what} {path} is missing (it was there when the gateway "
                                "started)", where=f"plugins.{plugin.name}",
                                fix=f"restore {path} (jobs are retried meanwhile), or disable plugins.{plugin.name} "
                                    "and restart the gateway")
    return None


class EventSink(Protocol):
    def __call__(self, type: str, payload: dict[str, Any]) -> None: ...


Binder = Callable[[Plugin, ResolvedAccount], Binding]
Composer = Callable[[str, PluginConfig, Plugin, Binding], dict[str, str]]


def _no_binding(plugin: Plugin, resolved: ResolvedAccount) -> Binding:
    return Binding(resolved, "no-lock")


def _no_secrets(name: str, pc: PluginConfig, plugin: Plugin, binding: Binding) -> dict[str, str]:
    return {}


def _ignore(type: str, payload: dict[str, Any]) -> None:
    return None


def same_directory(plugin: Plugin) -> None:
    """The plugin directory must still be the one discovery judged (device, inode): a
    directory renamed away and replaced after boot is not the plugin that was trusted."""
    try:
        st = os.stat(plugin.directory)
        now = (st.st_dev, st.st_ino)
    except OSError as err:
        raise PluginError(f"plugin directory {plugin.directory} is gone: {err.strerror}", where=plugin.directory,
                          fix="reinstall the plugin, then restart the gateway") from None
    if now != plugin.dir_id:
        raise PluginError(f"plugin directory {plugin.directory} was replaced after discovery "
                          f"(device:inode {plugin.dir_id[0]}:{plugin.dir_id[1]} then, {now[0]}:{now[1]} now)",
                          where=plugin.directory,
                          fix="find out who replaced it; restart the gateway to discover and judge it again")


class Executor:
    """Runs jobs for one booted Runtime. Fingerprint binding and secret composition are
    injected so this module stays the one spawn path while those layers evolve."""

    def __init__(self, runtime: Runtime, *, bind: Binder = _no_binding, compose: Composer = _no_secrets,
                 emit: EventSink = _ignore) -> None:
        self.runtime = runtime
        self.bind = bind
        self.compose = compose
        self.emit = emit

    def plugin_for(self, job: Job) -> tuple[Plugin, PluginConfig]:
        cfg = self.runtime.config
        pc = cfg.plugins.get(job.plugin)
        if pc is None:
            raise PluginError(f"plugin '{job.plugin}' is not configured", where=f"plugins.{job.plugin}",
                              fix=f"add plugins.{job.plugin}: {{}} (with a run_as grant) to the config")
        if not pc.enabled:
            raise PluginError(f"plugin '{job.plugin}' is disabled", where=f"plugins.{job.plugin}.enabled",
                              fix="set enabled: true")
        plugin = self.runtime.plugins.get(job.plugin)
        if plugin is None:
            skipped = [f for f in self.runtime.discovery.findings if job.plugin in f.location() or job.plugin in f.message]
            why = f": {skipped[0].message}" if skipped else ""
            raise PluginError(f"plugin '{job.plugin}' was not found in plugin_roots or was refused{why}",
                              where=f"plugins.{job.plugin}", fix="`ductile plugin list` shows what was found and why not")
        missing = plugin_missing(plugin)
        if missing is not None:
            raise missing
        if job.command not in {c.name for c in plugin.manifest.commands}:
            known = ", ".join(c.name for c in plugin.manifest.commands)
            raise PluginError(f"plugin '{job.plugin}' has no command '{job.command}' (it has: {known})",
                              where=plugin.manifest_path, fix="use one of its commands")
        return plugin, pc

    def prepare(self, job: Job) -> tuple[Plugin, PluginConfig, Binding, SpawnSpec]:
        """Everything up to the spawn, without running anything."""
        plugin, pc = self.plugin_for(job)
        same_directory(plugin)
        rt = self.runtime
        resolved = resolve_account(rt.config, job.plugin, rt.enforcing)
        binding = self.bind(plugin, resolved)
        if binding.downgraded_from is not None:
            log.warning("privsep: fingerprint mismatch, account downgraded: plugin=%s from=%s to=%s (%s)",
                        job.plugin, binding.downgraded_from, binding.account.name, binding.reason)
            self.emit("plugin.account_downgraded", {"plugin": job.plugin, "from": binding.downgraded_from,
                                                    "to": binding.account.name, "job_id": job.job_id,
                                                    "reason": binding.reason})
        refusal = rt.refused_accounts.get(binding.account.name or "")
        if refusal is not None:
            raise AccountRefused(f"account {binding.account.name} was refused at boot: {refusal.message}",
                                 where=refusal.path, fix=f"{refusal.fix}; then restart the gateway")
        spec = build_spawn_spec(binding.account, plugin.entrypoint, rt.config.service, rt.gateway_env,
                                timeout=rt.config.timeout_for(job.plugin, job.command),
                                unconfined_workdir=rt.unconfined_workdir(job.plugin),
                                gateway_uid=rt.assessment.gateway_uid if rt.enforcing else None,
                                confinement=rt.confinement_for(job.plugin, binding.account))
        return plugin, pc, binding, spec

    def run(self, job: Job, *, cancel: threading.Event | None = None) -> JobResult:
        """Run ``job`` once. Setting ``cancel`` kills the plugin through the spawn edge's kill
        path (the drop-aware one) and yields a non-terminal ``JobCancelled`` outcome."""
        resolved: ResolvedAccount | None = None
        spec: SpawnSpec | None = None
        binding: Binding | None = None
        try:
            plugin, pc, binding, spec = self.prepare(job)
            resolved = binding.account
            secrets = self.compose(job.plugin, pc, plugin, binding)
            if not spec.drops:
                os.makedirs(spec.workdir, mode=0o700, exist_ok=True)
            request = build_request(
                job_id=job.job_id, command=job.command, config=dict(pc.config), state=job.state,
                payload=job.payload, event=job.event, context=job.context,
                deadline_at=datetime.now(timezone.utc) + timedelta(seconds=spec.timeout), secrets=secrets,
            )
            pids: list[int] = []
            names = tuple(sorted(secrets))
            raw = spawn(spec, request, on_start=pids.append, cancel=cancel)
            del request, secrets
            outcome = screened(classify(spec, raw, job.plugin),
                               max_events=self.runtime.config.service.max_events_per_response)
            return JobResult(job, outcome, resolved, spec, pids[0] if pids else None,
                             secret_names=names, binding=binding)
        except DuctileError as err:
            if isinstance(err, AccountDropFailed) and resolved is not None:
                self.emit("plugin.drop_failed", {"job_id": job.job_id, "plugin": job.plugin, "account": resolved.name,
                                                 "uid": resolved.uid, "gid": resolved.gid, "error": err.message})
            # nothing ran: refusals before the spawn never get better by retrying, unless the
            # gateway itself is at fault (GatewayFault: the job is deferred, see serve.settle)
            terminal = not isinstance(err, GatewayFault)
            return JobResult(job, Outcome("failed", terminal, None, err, None), resolved, spec, binding=binding)
