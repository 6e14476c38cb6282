"""Containment for one gateway process: decided at boot from the same pure planner doctor
uses, set up once (cgroup instance, subreaper, lock directory, the kernel's Landlock ABI),
turned into a per-job ``Confinement`` (the data the spawn edge carries out: cgroup, limits,
lock, Landlock ruleset), and torn down at exit.

``assess_containment`` reads facts and decides without changing anything (doctor,
``account explain``); ``setup_containment`` carries the decision out (``plugin run``,
``serve``, ``account verify``).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from ductile.config import LoadedConfig
from ductile.config.model import Config, PluginConfig
from ductile.errors import BootRefused, ConfigError
from ductile.findings import Finding
from ductile.privsep import cgroup, kernel, landlock, landlock_linux
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.containment import CgroupPlan, LimitPlan, ModeDecision, choose_mode, plan_cgroup, plan_limits
from ductile.privsep.env import DirFacts, plugin_path
from ductile.privsep.spawnspec import Confinement
from ductile.privsep.surface import secret_surface
from ductile.runtime import jobcontain

log = logging.getLogger("ductile.runtime")


@dataclass(frozen=True)
class ContainmentView:
    """The decision, as doctor and the posture line show it."""

    plan: CgroupPlan
    decision: ModeDecision

    @property
    def controllers(self) -> tuple[str, ...]:
        """Controllers job cgroups would get (what setup enables)."""
        return self.plan.enable if self.decision.mode == "cgroup" else ()

    def limits_for(self, pc: PluginConfig | None, hard: dict[str, int | None]) -> LimitPlan:
        return limits_of(pc, self.controllers, hard)


def limits_of(pc: PluginConfig | None, controllers: tuple[str, ...], hard: dict[str, int | None]) -> LimitPlan:
    lim = pc.limits if pc is not None else None
    return plan_limits(lim.memory if lim else None, lim.pids if lim else None, lim.cpu if lim else None,
                       controllers, hard)


def assess_containment(config: Config) -> ContainmentView:
    """Which mode this process would run jobs in, without changing anything."""
    configured = config.service.containment
    if configured == "sweep":
        plan = CgroupPlan(False, "service.containment is sweep")
    else:
        plan = plan_cgroup(cgroup.read_facts(config.service.cgroup_root))
    return ContainmentView(plan, choose_mode(configured, plan))


def hard_limits() -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, res in (("nproc", resource.RLIMIT_NPROC), ("as", resource.RLIMIT_AS)):
        hard = resource.getrlimit(res)[1]
        out[name] = None if hard == resource.RLIM_INFINITY else hard
    return out


def _chain(path: str) -> list[DirFacts] | None:
    """stat of every directory from / down to ``path`` (resolved), None if it is missing."""
    try:
        real = os.path.realpath(path)
        parts = [p for p in real.split("/") if p]
        out = []
        cur = "/"
        for part in [""] + parts:
            cur = os.path.join(cur, part) if part else "/"
            st = os.stat(cur)
            out.append((st.st_mode, st.st_uid, st.st_gid))
        return out
    except OSError:
        return None


def account_path(dirs: Sequence[str], uid: int | None, gid: int | None) -> str:
    chains = {d: c for d in dirs if (c := _chain(d))}
    return plugin_path(dirs, uid, gid, chains)


def _shebang(entrypoint: str) -> list[str]:
    try:
        with open(entrypoint, "rb") as fh:
            head = fh.readline(256)
    except OSError:
        return []
    return head[2:].decode("utf-8", "replace").split() if head.startswith(b"#!") else []


def plugin_facts(directory: str, entrypoint: str, path: str) -> landlock.PluginFacts:
    """The plugin's directory, its #! interpreter's prefix and venv (env-style #! lines
    are resolved through the plugin's own PATH)."""
    words = _shebang(entrypoint)
    interp = words[0] if words else None
    if interp and os.path.basename(interp) == "env":
        name = next((w for w in words[1:] if not w.startswith("-") and "=" not in w), None)
        interp = shutil.which(name, path=path) if name else None
    if not interp:
        return landlock.PluginFacts(directory)
    real = os.path.realpath(interp)
    venv = os.path.dirname(os.path.dirname(interp))
    return landlock.PluginFacts(directory, os.path.dirname(os.path.dirname(real)),
                                venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else None)


def landlock_findings(loaded: LoadedConfig) -> list[Finding]:
    """``plugins.<n>.filesystem`` rules checked against the secret surface and the disk."""
    secrets = [(s.role, s.path) for s in secret_surface(loaded)]
    return landlock.rule_findings(loaded.config.plugins, secrets, os.path.exists)


@dataclass
class Containment:
    view: ContainmentView
    instance: cgroup.Instance | None = None
    lock_dir: str | None = None
    hard: dict[str, int | None] = field(default_factory=dict)
    stale: list[tuple[str, int]] = field(default_factory=list)   # (cgroup, processes) killed at setup

    instance_path: str = ""                 # kept after close, for the posture line
    controllers: tuple[str, ...] = ()
    landlock_abi: int = 0

    def __post_init__(self) -> None:
        if self.instance is not None:
            self.instance_path, self.controllers = self.instance.path, self.instance.controllers

    @property
    def mode(self) -> str:
        return self.view.decision.mode

    def describe(self) -> str:
        """The containment and Landlock part of the posture line."""
        if self.mode == "cgroup":
            text = f"containment=cgroup ({self.instance_path}; controllers: {','.join(self.controllers) or 'none'})"
        else:
            text = f"containment=sweep ({self.view.decision.reason})"
        return text + "; " + describe_landlock(self.landlock_abi)

    def limits_for(self, pc: PluginConfig | None) -> LimitPlan:
        return limits_of(pc, self.controllers, self.hard)

    def confinement_for(self, config: Config, plugin: str, resolved: ResolvedAccount,
                        facts: landlock.PluginFacts | None = None, *, filesystem: object = None,
                        network: object = None) -> Confinement:
        """What encloses one job. ``facts``: the plugin's directory and interpreter, for its
        Landlock ruleset (None: no ruleset); ``filesystem``/``network`` default to the
        plugin's config (``account verify`` passes its probe's own)."""
        pc = config.plugins.get(plugin)
        limits = self.limits_for(pc)
        lock = None
        path = account_path(config.service.plugin_path, resolved.uid, resolved.gid)
        ruleset = None
        if resolved.confined and self.lock_dir is not None and resolved.uid is not None:
            lock = jobcontain.lock_path(self.lock_dir, resolved.uid)
        if resolved.confined and facts is not None and resolved.state_dir is not None:
            fs = filesystem if filesystem is not None else (pc.filesystem if pc is not None else None)
            net = network if network is not None else (pc.network if pc is not None else None)
            ruleset = landlock.build_ruleset(self.landlock_abi, facts, resolved.state_dir,
                                             [d for d in path.split(":") if d], fs, net, os.path.exists)
        return Confinement(
            path=path, cgroup_parent=self.instance.path if self.instance is not None else None,
            cgroup_files=limits.cgroup_files, rlimits=limits.rlimits, lock_path=lock, landlock=ruleset,
            limits=limits.enforced,
        )

    def sweep_accounts(self, config: Config) -> list[tuple[str, int | None]]:
        """Kill the leftovers of every account no job runs for anywhere on the host (boot
        and shutdown). Returns (account, processes killed — None: a job of it runs)."""
        out: list[tuple[str, int | None]] = []
        if self.lock_dir is None:
            return out
        for name, acct in sorted(config.accounts.items()):
            out.append((name, jobcontain.sweep_if_alone(jobcontain.lock_path(self.lock_dir, acct.uid), acct.uid, acct.gid)))
        jobcontain.reap_orphans()
        return out

    def close(self) -> None:
        if self.instance is not None:
            try:
                self.instance.close()
            except OSError as err:  # the next gateway on this base removes it (reap_stale)
                log.warning("could not remove the cgroup %s: %s", self.instance.path, err.strerror)
            self.instance = None


def describe_landlock(abi: int) -> str:
    if abi <= 0:
        return "landlock=absent (no filesystem allowlist)"
    return f"landlock=abi{abi} ({landlock.enforced_kinds(abi)})"


def check_landlock(loaded: LoadedConfig, abi: int) -> list[str]:
    """Refuse (ConfigError / BootRefused) what must not start; return the warnings to log."""
    for f in landlock_findings(loaded):
        if f.severity == "error":
            raise ConfigError(f.message, where=loaded.where(f.field) + (": " if loaded.where(f.field) else "") + f.field,
                              fix=f.fix)
    if abi <= 0 and loaded.config.service.require_landlock:
        raise BootRefused("service.require_landlock is true but this kernel has no Landlock",
                          where="service.require_landlock",
                          fix="boot a kernel with Landlock enabled (CONFIG_SECURITY_LANDLOCK, lsm=...,landlock), or "
                              "set service.require_landlock: false")
    return [f"plugins.{name}.filesystem: unrestricted — plugin {name} runs without a Landlock allowlist"
            for name, pc in sorted(loaded.config.plugins.items()) if pc.filesystem == "unrestricted"]


def setup_containment(config: Config, *, enforcing: bool) -> Containment:
    """Carry out the decision: clean up after dead gateways on the same base, create this
    process's instance, become a subreaper (enforce), make the lock directory. Raises
    BootRefused when ``service.containment: cgroup`` cannot be honoured."""
    view = assess_containment(config)
    instance = None
    stale: list[tuple[str, int]] = []
    error = ""
    if view.plan.usable and view.plan.base is not None and config.service.containment != "sweep":
        stale = cgroup.reap_stale(view.plan.base)
        try:
            instance = cgroup.prepare(view.plan)
        except OSError as err:
            error = f"cannot set up job cgroups under {view.plan.base}: {err.strerror}"
    decision = choose_mode(config.service.containment, view.plan, error)
    if decision.refused:
        raise BootRefused(f"service.containment is cgroup but {decision.reason}", where="service.containment",
                          fix=decision.fix)
    lock_dir = None
    if enforcing:
        kernel.set_child_subreaper()
        if config.accounts:
            lock_dir = jobcontain.lock_dir_for(config.state.path)
            try:
                jobcontain.ensure_lock_dir(lock_dir)
            except OSError as err:
                if instance is not None:
                    instance.close()
                raise BootRefused(f"cannot create the account lock directory {lock_dir}: {err.strerror}",
                                  where="state.path", fix="the state directory must exist and be writable by the "
                                  "gateway") from None
    return Containment(ContainmentView(view.plan, decision), instance, lock_dir, hard_limits(), stale,
                       landlock_abi=landlock_linux.abi() if enforcing else 0)
