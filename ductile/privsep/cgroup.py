"""The cgroup v2 edge: read the facts ``containment.plan_cgroup`` decides on, set up this
process's instance directory, and create, place, kill and remove one cgroup per job.

Layout under the base (the gateway's own, delegated cgroup, or ``service.cgroup_root``):

    <base>/ductile-gateway/          the gateway itself, when it had to leave <base> so that
                                     <base> may enable controllers (systemd's delegation rule)
    <base>/ductile-<pid>-<ticks>/    one per gateway process (serve, plugin run, verify)
        job-<n>/                     one per job: limits written before the plugin runs,
                                     cgroup.kill at the end, then removed

Placement needs no capability: a process may move another (of any uid) when it can write
``cgroup.procs`` of the common ancestor and of the destination, which delegation grants.
A directory named after a process that is gone (``kill -9``) is killed and removed by the
next gateway that starts on the same base.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import itertools
import time
from dataclasses import dataclass

from ductile.privsep.containment import (GATEWAY_LEAF, CgroupFacts, CgroupPlan, base_path, instance_name,
                                         parse_instance)

EMPTY_WAIT = 2.0  # seconds to wait for a killed cgroup to empty before giving up on rmdir


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def cgroup2_mount(mountinfo: str) -> str | None:
    """The first cgroup2 mount point in /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        if sep and tail.split(" ", 1)[0] == "cgroup2":
            fields = head.split()
            if len(fields) >= 5:
                return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _kernel_has_kill() -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (5, 14)


def read_facts(configured: str | None) -> CgroupFacts:
    """Everything ``plan_cgroup`` needs, read without changing anything."""
    try:
        mount = cgroup2_mount(_read("/proc/self/mountinfo"))
        own = own_cgroup(_read("/proc/self/cgroup"))
    except OSError:
        return CgroupFacts(None, None, configured, euid=os.geteuid())
    facts = CgroupFacts(mount, own, configured, euid=os.geteuid())
    base = base_path(facts)
    if base is None or not os.path.isdir(base):
        return facts
    files = ("cgroup.procs", "cgroup.subtree_control")
    writable = os.access(base, os.W_OK | os.X_OK) and all(os.access(os.path.join(base, f), os.W_OK) for f in files)
    try:
        controllers = tuple(_read(os.path.join(base, "cgroup.controllers")).split())
        subtree = tuple(_read(os.path.join(base, "cgroup.subtree_control")).split())
    except OSError:
        controllers = subtree = ()
    is_root = mount is not None and base == posixpath.normpath(mount)
    kill = _kernel_has_kill() if is_root else os.path.exists(os.path.join(base, "cgroup.kill"))
    return CgroupFacts(mount, own, configured, True, writable, controllers, subtree, kill, os.geteuid())


def _start_ticks(pid: int) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def procs_in(path: str) -> list[int]:
    """Pids in ``path`` and every cgroup below it."""
    out: list[int] = []
    for root, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                out += [int(p) for p in _read(os.path.join(root, "cgroup.procs")).split()]
            except OSError:
                continue
    return out


def populated(path: str) -> bool:
    try:
        for line in _read(os.path.join(path, "cgroup.events")).splitlines():
            if line.startswith("populated "):
                return line.split()[1] != "0"
    except OSError:
        return False
    return False


def kill_tree(path: str) -> int:
    """SIGKILL everything in ``path`` and below (cgroup.kill is recursive), wait for it to
    empty, and remove the directories bottom-up. Returns how many processes it held."""
    if not os.path.isdir(path):
        return 0
    held = len(procs_in(path))
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
    except OSError:
        pass
    deadline = time.monotonic() + EMPTY_WAIT
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir(os.path.join(root, d))
    _rmdir(path)
    return held


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            raise


def reap_stale(base: str) -> list[tuple[str, int]]:
    """Kill and remove instance directories whose gateway process is gone. Returns
    (directory, processes killed) for each."""
    out: list[tuple[str, int]] = []
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in sorted(names):
        owner = parse_instance(name)
        if owner is None:
            continue
        pid, ticks = owner
        if _start_ticks(pid) == ticks:
            continue  # a live gateway's jobs
        path = os.path.join(base, name)
        out.append((path, kill_tree(path)))
    return out


@dataclass
class JobCgroup:
    path: str

    def place(self, pid: int) -> None:
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def kill(self) -> None:
        """SIGKILL every process of the job now (returns at once)."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
        except FileNotFoundError:
            pass

    def oom_killed(self) -> bool:
        try:
            for line in _read(os.path.join(self.path, "memory.events")).splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
        except (OSError, ValueError):
            return False
        return False

    def end(self) -> int:
        """cgroup.kill the job, wait until it is empty, remove it. Returns how many
        processes were left. A job that left nothing (``populated 0``: nothing in it or
        below it lives, and nothing can enter an empty cgroup but by a write to its
        cgroup.procs, which only the gateway may make) is removed at once; anything else —
        a process, a child cgroup, an error — takes the whole way (``kill_tree``)."""
        if not populated(self.path):
            try:
                os.rmdir(self.path)
                return 0
            except FileNotFoundError:
                return 0
            except OSError:
                pass
        return kill_tree(self.path)


_seq = itertools.count(1)


def new_job(parent: str, files: tuple[tuple[str, str], ...]) -> JobCgroup:
    """A fresh job cgroup under ``parent`` (this process's instance) with its limits written."""
    path = os.path.join(parent, f"job-{next(_seq)}")
    os.mkdir(path, 0o755)
    try:
        for name, value in files:
            _write(os.path.join(path, name), value)
    except OSError:
        _rmdir(path)
        raise
    return JobCgroup(path)


@dataclass(frozen=True)
class Instance:
    """This process's directory of job cgroups."""

    base: str
    path: str
    controllers: tuple[str, ...]   # enabled for job cgroups
    moved_self: bool = False

    def close(self) -> None:
        kill_tree(self.path)


def prepare(plan: CgroupPlan) -> Instance:
    """Carry out ``plan``: leave for a leaf if needed, enable controllers, create this
    process's instance directory. Raises OSError when the subtree turns out unusable."""
    assert plan.usable and plan.base is not None
    base = plan.base
    if plan.move_self:
        leaf = os.path.join(base, GATEWAY_LEAF)
        os.makedirs(leaf, mode=0o755, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
    for ctl in plan.enable:
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), "+" + ctl)
        except OSError:
            pass  # reported through the controllers actually enabled below
    try:
        enabled = tuple(_read(os.path.join(base, "cgroup.subtree_control")).split())
    except OSError:
        enabled = ()
    ticks = _start_ticks(os.getpid()) or 0
    path = os.path.join(base, instance_name(os.getpid(), ticks))
    os.mkdir(path, 0o755)
    try:
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            raise OSError(errno.ENOTSUP, "the kernel has no cgroup.kill (Linux 5.14 or newer is needed)")
        for ctl in enabled:
            try:
                _write(os.path.join(path, "cgroup.subtree_control"), "+" + ctl)
            except OSError:
                pass
        controllers = tuple(_read(os.path.join(path, "cgroup.subtree_control")).split())
    except OSError:
        _rmdir(path)
        raise
    return Instance(base, path, controllers, plan.move_self)
