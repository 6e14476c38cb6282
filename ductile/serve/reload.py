"""Reload a running gateway without a restart (#15): SIGHUP, ``ductile system reload``
(over the control channel) and ``POST /system/reload`` all come here.

A reload builds a whole new *generation* — config re-read and validated, plugins
re-discovered, API tokens and webhook keys re-resolved from the vault, the boot gate and
the filesystem reconcile run again, schedules rebuilt — and only when every step has
succeeded swaps it in, one reference at a time, under the reload lock:

    the dispatcher   new jobs run on the new runtime; a job already running finishes and
                     is recorded on the one it started with
    the scheduler    from its next tick (a schedule whose definition did not change keeps
                     its id, so its memory: no slot is repeated or lost)
    the API          new requests see the new tokens, scopes, plugins and webhooks; a
                     request already being answered finishes with the old ones

A reload that fails at any step changes nothing that is running (the reconcile may have
tightened a mode, as a boot would) and says why: a log line, the API answer, the exit
code of ``system reload``. Some settings are fixed for the life of the process, and a
change to them is refused with the reason instead of half-applied — ``restart_needed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ductile.config import LoadedConfig, load_config
from ductile.config.model import Config
from ductile.errors import BootRefused, DuctileError
from ductile.runtime.boot import Runtime, boot, discover
from ductile.serve.secrets import AuditedSource, GatewaySecrets, SecretSource, VaultSource, resolve_gateway_secrets
from ductile.serve.ticks import Schedule, schedules_of
from ductile.state.db import StateDB

# (setting, why it needs a restart): each is bound once, when the process starts
FIXED: tuple[tuple[str, str], ...] = (
    ("state.path", "the gateway holds this database's instance lock and its connections"),
    ("api.enabled", "the listening socket is opened (or not) at boot"),
    ("api.listen", "the listening socket is bound at boot"),
    ("api.max_connections", "the connection guard and the open-file limit are sized at boot"),
    ("api.header_timeout", "the connection guard is built at boot"),
    ("api.body_timeout", "the connection guard is built at boot"),
    ("api.keepalive_timeout", "the HTTP server is configured at boot"),
    ("service.max_workers", "the worker threads are started at boot"),
    ("service.unconfined", "the boot gate's posture is decided once"),
    ("service.containment", "the job cgroups (or the sweep) are set up once"),
    ("service.cgroup_root", "the job cgroups are set up once"),
    ("accounts", "the accounts' uids, gids and directories are what running jobs and the sweep rely on"),
)


class ReloadRefused(DuctileError):
    """The new config changes a setting that needs a restart; nothing was changed."""

    kind = "reload_refused"


@dataclass(frozen=True)
class Change:
    setting: str
    why: str


def _value(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def restart_needed(old: Config, new: Config) -> list[Change]:
    """Every fixed setting (``FIXED``) that differs between the running and the new config.
    Pure; the table is the rule, and its test."""
    return [Change(name, why) for name, why in FIXED if _value(old, name) != _value(new, name)]


@dataclass
class Generation:
    """One complete set of what the gateway runs with; replaced whole by a reload."""

    loaded: LoadedConfig
    runtime: Runtime
    schedules: list[Schedule]
    secrets: GatewaySecrets = field(repr=False)
    number: int = 1

    @property
    def config(self) -> Config:
        return self.loaded.config


def prepare(current: Generation, db: StateDB, *, config_path: str | None = None,
            secret_source: SecretSource | None = None) -> Generation:
    """Build the next generation from the config on disk, or raise the first reason it
    cannot be used (``ConfigError``, ``BootRefused``, ``ReloadRefused``, ...)."""
    loaded = load_config(config_path or current.loaded.path)
    if loaded.config.webhooks and not loaded.config.api.enabled:
        raise BootRefused("webhooks are configured but api.enabled is false, so nothing would receive them",
                          where="api.enabled", fix="remove the webhooks, or enable the API (a restart)")
    changes = restart_needed(current.config, loaded.config)
    if changes:
        names = ", ".join(c.setting for c in changes)
        raise ReloadRefused(f"{names} changed, which needs a restart ({changes[0].why}); the running config is kept",
                            where=loaded.path, fix="restart the gateway (systemctl restart ductile), or put the "
                                                   f"old value of {names} back and reload")
    schedules = schedules_of(loaded.config)
    discovery = discover(loaded)
    secrets = resolve_gateway_secrets(loaded.config, AuditedSource(secret_source or VaultSource(loaded.config), db))
    runtime = boot(loaded, discovery=discovery, containment=current.runtime.containment)
    if runtime.assessment.verdict.posture != current.runtime.assessment.verdict.posture:
        raise ReloadRefused(f"the boot gate now says posture {runtime.assessment.verdict.posture}, not "
                            f"{current.runtime.assessment.verdict.posture}; the running config is kept",
                            where=loaded.path, fix="restart the gateway to change its posture")
    return Generation(loaded, runtime, schedules, secrets, current.number + 1)


@dataclass(frozen=True)
class ReloadResult:
    """What one reload attempt did: the API answer, the control reply and the log line."""

    ok: bool
    source: str                 # signal | control | api:<token>
    at: float
    generation: int
    message: str
    fix: str = ""
    restart_required: bool = False
    plugins: int = 0
    schedules: int = 0
    tokens: int = 0
    webhooks: int = 0

    @property
    def result(self) -> str:
        return "ok" if self.ok else ("restart_required" if self.restart_required else "failed")

    def as_dict(self) -> dict[str, Any]:
        out = {"reloaded": self.ok, "result": self.result, "source": self.source,
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)), "generation": self.generation,
               "message": self.message}
        if self.ok:
            out.update(plugins=self.plugins, schedules=self.schedules, tokens=self.tokens, webhooks=self.webhooks)
        else:
            out.update(fix=self.fix, restart_required=self.restart_required)
        return out


@dataclass
class ReloadHistory:
    """Counts and the last result, for /healthz, ``system status`` and /metrics."""

    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "restart_required": 0})
    last: ReloadResult | None = None

    def add(self, result: ReloadResult) -> None:
        self.counts[result.result] = self.counts.get(result.result, 0) + 1
        self.last = result

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "last": None if self.last is None else self.last.as_dict()}


def attempt(current: Generation, db: StateDB, source: str, swap: Callable[[Generation], None], *,
            secret_source: SecretSource | None = None, clock: Callable[[], float] = time.time) -> ReloadResult:
    """Prepare the next generation and hand it to ``swap``; never raises for a bad config."""
    try:
        nxt = prepare(current, db, secret_source=secret_source)
    except DuctileError as err:
        said = " ".join((f"{err.where}: {err.message}" if err.where else err.message).split())  # the fix is apart
        return ReloadResult(False, source, clock(), current.number, said, err.fix,
                            restart_required=isinstance(err, ReloadRefused))
    swap(nxt)
    cfg = nxt.config
    return ReloadResult(True, source, clock(), nxt.number,
                        f"reloaded {nxt.loaded.path}: {len(nxt.runtime.plugins)} plugin(s), {len(nxt.schedules)} "
                        f"schedule(s), {len(nxt.secrets.tokens)} token(s), {len(cfg.webhooks)} webhook(s)",
                        plugins=len(nxt.runtime.plugins), schedules=len(nxt.schedules), tokens=len(nxt.secrets.tokens),
                        webhooks=len(cfg.webhooks))
