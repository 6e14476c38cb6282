"""How a job's processes are contained and ended, decided from plain facts (SPEC §5.9). Pure.

A plugin that fights back forks, ``setsid``s, double-forks into a daemon or joins another
process group; "kill the process group at a timeout" misses all of that. Every process a
job creates must be gone when the job ends, whatever the outcome. Two mechanisms:

* **cgroup** — each job gets a cgroup v2 of its own under a subtree the gateway may write
  (root, or systemd's ``Delegate=yes`` for the cap-only unit). The plugin is placed in it
  before its first instruction (the trampoline waits on stdin until the gateway has moved
  it), and ``cgroup.kill`` ends the whole job at once, however it forked.
* **sweep** — no writable cgroup v2: the gateway is a child subreaper and, after every job,
  kills the account's leftover processes when no other job of that account runs on the
  host (a per-account lock under the state directory, shared by every ductile process).

The mode, as a truth table (``service.containment`` x a usable cgroup subtree):

    configured | usable subtree | mode
    -----------+----------------+------------------------------------------------
    sweep      | any            | sweep
    auto       | yes            | cgroup
    auto       | no             | sweep   (doctor warns; the posture line says so)
    cgroup     | yes            | cgroup
    cgroup     | no             | REFUSE  (names why, and how to delegate a subtree)

Limits (``plugins.<n>.limits``), per limit, by what enforces it:

    limit  | controller enabled for job cgroups | otherwise
    -------+------------------------------------+---------------------------------------------
    memory | memory.max (+ memory.oom.group=1)  | RLIMIT_AS
    pids   | pids.max                           | RLIMIT_NPROC (counts every process of the account)
    cpu    | cpu.max                            | not enforced (no rlimit expresses a CPU share)

RLIMIT_CORE is 0 for every job: a plugin's core dump would hold the secrets it was handed.
rlimits can only be lowered without CAP_SYS_RESOURCE, so a requested value above the limit
the gateway itself runs under becomes that limit (already tighter).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["cgroup", "sweep"]
WANTED_CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000
INSTANCE_PREFIX = "ductile-"     # <base>/ductile-<pid>-<start ticks>: one per gateway process
GATEWAY_LEAF = "ductile-gateway"  # where a gateway moves itself inside a delegated subtree
DELEGATE_FIX = ("run the gateway as root, or under systemd with Delegate=yes (`ductile deploy render unit` "
                "writes it), or point service.cgroup_root at a cgroup v2 directory the gateway owns")


@dataclass(frozen=True)
class CgroupFacts:
    """What the cgroup edge read, without changing anything."""

    mount: str | None                  # where cgroup2 is mounted, None: not mounted
    own: str | None                    # this process's cgroup v2 path ("/x/y"), None: unknown
    configured: str | None             # service.cgroup_root
    base_exists: bool = False
    base_writable: bool = False        # the directory, its cgroup.procs and cgroup.subtree_control
    base_controllers: tuple[str, ...] = ()   # <base>/cgroup.controllers
    base_subtree: tuple[str, ...] = ()       # <base>/cgroup.subtree_control
    kill_supported: bool = True        # cgroup.kill exists (Linux >= 5.14)
    euid: int = 0


@dataclass(frozen=True)
class CgroupPlan:
    """What the edge must do to use ``base``, or why it cannot."""

    usable: bool
    why_not: str = ""
    base: str | None = None
    move_self: bool = False            # into <base>/ductile-gateway, so base may enable controllers
    enable: tuple[str, ...] = ()       # controllers to write into <base>/cgroup.subtree_control


def base_path(facts: CgroupFacts) -> str | None:
    if facts.configured:
        return posixpath.normpath(facts.configured)
    if facts.mount is None or facts.own is None:
        return None
    return posixpath.normpath(facts.mount + "/" + facts.own.lstrip("/"))


def plan_cgroup(facts: CgroupFacts) -> CgroupPlan:
    """Can this process put jobs in cgroups of their own, and what must it do first?"""
    if facts.mount is None:
        return CgroupPlan(False, "no cgroup v2 hierarchy is mounted")
    base = base_path(facts)
    if base is None:
        return CgroupPlan(False, "this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
    where = "service.cgroup_root " + base if facts.configured else "its own cgroup " + base
    if not (base == facts.mount or base.startswith(facts.mount.rstrip("/") + "/")):
        return CgroupPlan(False, f"{where} is not under the cgroup v2 mount {facts.mount}")
    if not facts.base_exists:
        return CgroupPlan(False, f"{where} does not exist")
    if not facts.base_writable:
        return CgroupPlan(False, f"{where} is not writable by uid {facts.euid} (not delegated to the gateway)")
    if not facts.kill_supported:
        return CgroupPlan(False, "the kernel has no cgroup.kill (Linux 5.14 or newer is needed)")
    is_root_cgroup = base == posixpath.normpath(facts.mount)
    inside = facts.own is not None and base == posixpath.normpath(facts.mount + "/" + facts.own.lstrip("/"))
    wanted = tuple(c for c in WANTED_CONTROLLERS if c in facts.base_controllers)
    if is_root_cgroup:
        # never change the host's top-level distribution: use what is already enabled there
        return CgroupPlan(True, base=base, enable=())
    # a cgroup with processes cannot enable controllers for its children ("no internal
    # processes"): the gateway leaves for a leaf of its own first, as systemd asks of
    # every delegatee
    move = inside and bool(set(wanted) - set(facts.base_subtree))
    return CgroupPlan(True, base=base, move_self=move, enable=wanted)


@dataclass(frozen=True)
class ModeDecision:
    mode: Mode
    reason: str                        # one line for the posture line and doctor
    refused: bool = False
    fix: str = ""


def choose_mode(configured: str, plan: CgroupPlan, setup_error: str = "") -> ModeDecision:
    """The truth table above. ``setup_error``: the edge tried the plan and failed."""
    usable = plan.usable and not setup_error
    why = setup_error or plan.why_not
    if configured == "sweep":
        return ModeDecision("sweep", "service.containment is sweep")
    if usable:
        return ModeDecision("cgroup", f"a cgroup v2 per job under {plan.base}")
    if configured == "cgroup":
        return ModeDecision("sweep", why, refused=True, fix=DELEGATE_FIX)
    return ModeDecision("sweep", f"no writable cgroup v2 subtree ({why}): leftovers are swept per account")


@dataclass(frozen=True)
class LimitPlan:
    """How one job's limits are enforced."""

    cgroup_files: tuple[tuple[str, str], ...] = ()   # (file in the job cgroup, value)
    rlimits: tuple[tuple[str, int], ...] = (("core", 0),)   # (name, value) for the trampoline
    enforced: dict[str, str] = field(default_factory=dict)  # limit -> what enforces it (or why not)


RLIMIT_NAMES = {"core": "RLIMIT_CORE", "nproc": "RLIMIT_NPROC", "as": "RLIMIT_AS"}


def _cap(value: int, hard: int | None) -> int:
    return value if hard is None or hard < 0 else min(value, hard)


def plan_limits(memory: int | None, pids: int | None, cpu: int | None, controllers: tuple[str, ...],
                hard: Mapping[str, int | None]) -> LimitPlan:
    """``controllers``: enabled for job cgroups (empty in sweep mode); ``hard``: the hard
    rlimits the gateway runs under (None or negative: unlimited), keyed nproc / as."""
    files: list[tuple[str, str]] = []
    rlimits: list[tuple[str, int]] = [("core", 0)]
    enforced: dict[str, str] = {}
    if memory is not None:
        if "memory" in controllers:
            files += [("memory.max", str(memory)), ("memory.oom.group", "1")]
            enforced["memory"] = f"cgroup memory.max={memory}"
        else:
            value = _cap(memory, hard.get("as"))
            rlimits.append(("as", value))
            enforced["memory"] = f"RLIMIT_AS={value} (no memory controller for job cgroups)"
    if pids is not None:
        if "pids" in controllers:
            files.append(("pids.max", str(pids)))
            enforced["pids"] = f"cgroup pids.max={pids}"
        else:
            value = _cap(pids, hard.get("nproc"))
            rlimits.append(("nproc", value))
            enforced["pids"] = f"RLIMIT_NPROC={value} (per account; no pids controller for job cgroups)"
    if cpu is not None:
        if "cpu" in controllers:
            files.append(("cpu.max", f"{cpu * CPU_PERIOD_US // 100} {CPU_PERIOD_US}"))
            enforced["cpu"] = f"cgroup cpu.max={cpu}%"
        else:
            enforced["cpu"] = "NOT ENFORCED (no cpu controller for job cgroups; no rlimit expresses a CPU share)"
    return LimitPlan(tuple(files), tuple(rlimits), enforced)


def instance_name(pid: int, start_ticks: int) -> str:
    """The per-process directory under the base; pid + start time tell a dead owner apart."""
    return f"{INSTANCE_PREFIX}{pid}-{start_ticks}"


def parse_instance(name: str) -> tuple[int, int] | None:
    if not name.startswith(INSTANCE_PREFIX):
        return None
    pid, sep, ticks = name[len(INSTANCE_PREFIX):].partition("-")
    if not sep or not pid.isdigit() or not ticks.isdigit():
        return None
    return int(pid), int(ticks)
