"""The boot sequence every plugin-running command shares (SPEC §8), as data:

    load config -> discover plugins -> probe capability (edge) -> evaluate_boot_gate (pure)
      -> refuse | unconfined | enforce: harden own process (edge), snapshot (edge),
         plan_reconcile (pure), apply all-or-refuse (edge)
      -> containment: cgroup instance or sweep, subreaper, account locks (runtime/confine.py)

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
from ductile.privsep.reconcile import Action, Plan, paths_to_snapshot, plan_reconcile
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.spawnspec import Confinement
from ductile.privsep.surface import account_dirs, secret_surface
from ductile.runtime.confine import Containment, check_landlock, plugin_facts, setup_containment


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
    applied: tuple[Action, ...] = ()
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
        runtime.applied = tuple(fsapply.apply_plan(assessment.plan))
    runtime.containment = setup_containment(loaded.config, enforcing=assessment.enforcing)
    if assessment.enforcing:
        try:
            runtime.warnings += check_landlock(loaded, runtime.containment.landlock_abi)
        except BaseException:
            runtime.close()
            raise
    return runtime
