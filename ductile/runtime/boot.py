"""The boot sequence every plugin-running command shares (SPEC §8), as data:

    load config -> discover plugins -> probe capability (edge) -> evaluate_boot_gate (pure)
      -> refuse | unconfined | enforce: harden own process (edge), snapshot (edge),
         plan_reconcile (pure), side-door audit (pure over host facts),
         apply through descriptors (edge)
      -> containment: cgroup instance or sweep, subreaper, account locks (runtime/confine.py)

A refusal of the gateway's own surface (config, DB, vault, age key, a writable directory
on the plugins' PATH) stops the boot; one account's problem (its state_dir, a privileged
gid) refuses that account only — ``Runtime.refused_accounts`` — and its jobs fail with
the reason while every other account keeps running. Every applied change and every
warning comes back in ``Runtime.notes`` for the caller to log and record.

``plugin run`` and ``serve`` both call ``boot``; ``doctor`` and ``account explain`` call
``assess`` which runs the same pure steps without side effects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ductile.config import Config, LoadedConfig
from ductile.errors import BootRefused
from ductile.plugins.discovery import Discovery, Plugin
from ductile.plugins.inventory import discover_for_config
from ductile.privsep import fsapply, kernel
from ductile.privsep.gate import GateVerdict, evaluate_boot_gate
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.spawnspec import Confinement
from ductile.privsep.fsapply import Applied
from ductile.privsep.hostfacts import side_doors
from ductile.privsep.reconcile import Plan, Refusal, paths_to_snapshot, plan_reconcile
from ductile.privsep.sidedoor import AccountFacts, SideDoor
from ductile.privsep.surface import account_dirs, secret_surface
from ductile.privsep.trust import Owners
from ductile.plugins.inventory import account_uids, plugin_search_path
from ductile.runtime.asaccount import ChmodHelper
from ductile.runtime.confine import Containment, check_landlock, plugin_facts, setup_containment


@dataclass(frozen=True)
class Assessment:
    """What the gate, the reconcile planner and the side-door audit say about this host,
    without acting on it."""

    verdict: GateVerdict
    capability: bool
    gateway_uid: int
    plan: Plan | None  # None unless the posture is enforce
    side_doors: tuple[SideDoor, ...] = ()  # empty unless the posture is enforce

    @property
    def enforcing(self) -> bool:
        return self.verdict.posture == "enforce"

    def refusals(self) -> list[Refusal]:
        """Every refusal, reconcile and side doors alike (scope None: the whole gateway)."""
        out = list(self.plan.refusals) if self.plan is not None else []
        out += [Refusal(d.path, d.rule, d.message, d.fix, d.account) for d in self.side_doors if d.severity == "refuse"]
        return out


@dataclass
class Runtime:
    loaded: LoadedConfig
    discovery: Discovery
    assessment: Assessment
    applied: tuple[Applied, ...] = ()
    refused_accounts: dict[str, Refusal] = field(default_factory=dict)
    hardening: kernel.Hardening | None = None
    gateway_env: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)
    containment: Containment | None = None
    warnings: list[str] = field(default_factory=list)   # logged at WARN by plugin run and serve

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def plugins(self) -> dict[str, Plugin]:
        return self.discovery.plugins

    @property
    def enforcing(self) -> bool:
        return self.assessment.enforcing

    def unconfined_workdir(self, plugin: str) -> str:
        """Private working dir for a plugin that runs at the gateway uid."""
        return os.path.join(os.path.dirname(self.config.state.path), "unconfined", plugin)

    def posture_line(self) -> str:
        v = self.assessment.verdict
        line = f"posture={v.posture} cell={v.cell} gateway_uid={self.assessment.gateway_uid}: {v.message}"
        if self.containment is not None:
            line += f"; {self.containment.describe()}"
        return line

    def confinement_for(self, plugin: str, resolved: ResolvedAccount) -> Confinement | None:
        """What encloses a job of ``plugin`` run as ``resolved`` (None before containment is set up)."""
        if self.containment is None:
            return None
        found = self.plugins.get(plugin)
        facts = None
        if found is not None:
            path = self.config.service.plugin_path
            facts = plugin_facts(found.directory, found.entrypoint, ":".join(path))
        return self.containment.confinement_for(self.config, plugin, resolved, facts)

    def close(self) -> None:
        """Remove this process's job cgroups; safe to call twice."""
        if self.containment is not None:
            self.containment.close()

    def notes(self, *, warnings: bool = True) -> list[tuple[str, str]]:
        """(level, line) for the log: every change the reconcile made, every refused account
        and (unless ``warnings`` is False) every side-door warning."""
        out = [("warning" if a.action.op == "chmod" else "info", a.line()) for a in self.applied]
        out += [("warning", f"warning: {w}") for w in self.warnings]
        for name, r in sorted(self.refused_accounts.items()):
            out.append(("error", f"account {name} refused: {r.message} (fix: {r.fix}); its jobs fail until it is "
                                 "fixed and the gateway restarted"))
        if warnings:
            out += [("warning", f"side door: {d.message} (fix: {d.fix})") for d in self.assessment.side_doors
                    if d.severity == "warn"]
        return out


def reconcile_plan(loaded: LoadedConfig, gateway_uid: int, can_chown: bool) -> Plan:
    surface = secret_surface(loaded)
    accts = account_dirs(loaded)
    snaps = fsapply.snapshots(paths_to_snapshot(surface, accts))
    reach = [(f"plugin_roots[{i}]", r) for i, r in enumerate(loaded.config.plugin_roots)]
    return plan_reconcile(surface, accts, snaps, gateway_uid=gateway_uid, can_chown=can_chown, must_reach=reach)


def owners(config: Config, gateway_uid: int) -> Owners:
    return Owners.of(account_uids(config), gateway_uid)


def side_door_audit(config: Config, gateway_uid: int, gateway_env: Mapping[str, str] | None = None) -> list[SideDoor]:
    accounts = [AccountFacts(n, a.uid, a.gid, a.state_dir) for n, a in config.accounts.items()]
    return side_doors(accounts, plugin_search_path(config, gateway_env), owners(config, gateway_uid))


def assess(loaded: LoadedConfig, *, capability: bool | None = None, gateway_uid: int | None = None,
           gateway_env: Mapping[str, str] | None = None) -> Assessment:
    """Gate verdict, reconcile plan and side doors for this process (or for the given facts)."""
    cap = kernel.probe_capability() if capability is None else capability
    uid = os.geteuid() if gateway_uid is None else gateway_uid
    verdict = evaluate_boot_gate(cap, len(loaded.config.accounts), loaded.config.service.unconfined)
    if verdict.posture != "enforce":
        return Assessment(verdict, cap, uid, None)
    plan = reconcile_plan(loaded, uid, can_chown=(uid == 0))
    return Assessment(verdict, cap, uid, plan, tuple(side_door_audit(loaded.config, uid, gateway_env)))


def discover(loaded: LoadedConfig) -> Discovery:
    return discover_for_config(loaded.config)


def boot(loaded: LoadedConfig, *, env: Mapping[str, str] | None = None,
         discovery: Discovery | None = None, containment: Containment | None = None) -> Runtime:
    """Run the gate; when enforcing, harden this process and reconcile the filesystem.
    Raises BootRefused (and runs nothing) on any refusal. ``serve`` passes the discovery it
    made before opening the state database (SPEC §8 order) so plugins are walked once.
    A reload passes the running gateway's ``containment``: the cgroup instance, lock
    directory and subreaper are the process's, set up once (changing them needs a restart)."""
    discovery = discover(loaded) if discovery is None else discovery
    gateway_env = dict(os.environ if env is None else env)
    assessment = assess(loaded, gateway_env=gateway_env)
    v = assessment.verdict
    if v.refused:
        raise BootRefused(v.message, where=f"boot gate ({v.cell})", fix=v.fix)
    runtime = Runtime(loaded, discovery, assessment, gateway_env=gateway_env)
    if assessment.enforcing:
        for door in assessment.side_doors:
            if door.severity == "refuse" and door.account is None:
                raise BootRefused(door.message, where=door.path, fix=door.fix)
        runtime.hardening = kernel.harden_gateway()
        assert assessment.plan is not None
        result = fsapply.apply_plan(assessment.plan, owners(loaded.config, assessment.gateway_uid),
                                    as_account=ChmodHelper(loaded.config, assessment.gateway_uid))
        runtime.applied = tuple(result.applied)
        runtime.refused_accounts = result.refused
        for r in assessment.refusals():
            if r.scope is not None:
                runtime.refused_accounts.setdefault(r.scope, r)
    shared = containment is not None
    runtime.containment = containment if shared else setup_containment(loaded.config, enforcing=assessment.enforcing)
    assert runtime.containment is not None
    if assessment.enforcing:
        try:
            runtime.warnings += check_landlock(loaded, runtime.containment.landlock_abi)
        except BaseException:
            if not shared:
                runtime.close()
            raise
    return runtime
