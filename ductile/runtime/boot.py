"""The boot sequence every plugin-running command shares (SPEC §8), as data:

    load config -> discover plugins -> probe capability (edge) -> evaluate_boot_gate (pure)
      -> refuse | unconfined | enforce: harden own process (edge), snapshot (edge),
         plan_reconcile (pure), apply through descriptors (edge)

A refusal of the gateway's own surface (config, DB, vault, age key) stops the boot; one
account's broken state_dir refuses that account only — ``Runtime.refused_accounts`` —
and its jobs fail with the reason while every other account keeps running.

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
from ductile.privsep.fsapply import Applied
from ductile.privsep.reconcile import Plan, Refusal, paths_to_snapshot, plan_reconcile
from ductile.privsep.surface import account_dirs, secret_surface
from ductile.privsep.trust import Owners
from ductile.runtime.asaccount import ChmodHelper


@dataclass(frozen=True)
class Assessment:
    """What the gate and the reconcile planner say about this host, without acting on it."""

    verdict: GateVerdict
    capability: bool
    gateway_uid: int
    plan: Plan | None  # None unless the posture is enforce

    @property
    def enforcing(self) -> bool:
        return self.verdict.posture == "enforce"


@dataclass
class Runtime:
    loaded: LoadedConfig
    discovery: Discovery
    assessment: Assessment
    applied: tuple[Applied, ...] = ()
    refused_accounts: dict[str, Refusal] = field(default_factory=dict)
    hardening: kernel.Hardening | None = None
    gateway_env: dict[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

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
        return f"posture={v.posture} cell={v.cell} gateway_uid={self.assessment.gateway_uid}: {v.message}"


def reconcile_plan(loaded: LoadedConfig, gateway_uid: int, can_chown: bool) -> Plan:
    surface = secret_surface(loaded)
    accts = account_dirs(loaded)
    snaps = fsapply.snapshots(paths_to_snapshot(surface, accts))
    reach = [(f"plugin_roots[{i}]", r) for i, r in enumerate(loaded.config.plugin_roots)]
    return plan_reconcile(surface, accts, snaps, gateway_uid=gateway_uid, can_chown=can_chown, must_reach=reach)


def assess(loaded: LoadedConfig, *, capability: bool | None = None, gateway_uid: int | None = None) -> Assessment:
    """Gate verdict and reconcile plan for this process (or for the given facts)."""
    cap = kernel.probe_capability() if capability is None else capability
    uid = os.geteuid() if gateway_uid is None else gateway_uid
    verdict = evaluate_boot_gate(cap, len(loaded.config.accounts), loaded.config.service.unconfined)
    plan = reconcile_plan(loaded, uid, can_chown=(uid == 0)) if verdict.posture == "enforce" else None
    return Assessment(verdict, cap, uid, plan)


def discover(loaded: LoadedConfig) -> Discovery:
    return discover_for_config(loaded.config)


def boot(loaded: LoadedConfig, *, env: Mapping[str, str] | None = None,
         discovery: Discovery | None = None) -> Runtime:
    """Run the gate; when enforcing, harden this process and reconcile the filesystem.
    Raises BootRefused (and runs nothing) on any refusal. ``serve`` passes the discovery it
    made before opening the state database (SPEC §8 order) so plugins are walked once."""
    discovery = discover(loaded) if discovery is None else discovery
    assessment = assess(loaded)
    v = assessment.verdict
    if v.refused:
        raise BootRefused(v.message, where=f"boot gate ({v.cell})", fix=v.fix)
    runtime = Runtime(loaded, discovery, assessment, gateway_env=dict(os.environ if env is None else env))
    if assessment.enforcing:
        runtime.hardening = kernel.harden_gateway()
        assert assessment.plan is not None
        owners = Owners.of((a.uid for a in loaded.config.accounts.values()), assessment.gateway_uid)
        result = fsapply.apply_plan(assessment.plan, owners,
                                    as_account=ChmodHelper(loaded.config, assessment.gateway_uid))
        runtime.applied = tuple(result.applied)
        runtime.refused_accounts = result.refused
    return runtime
