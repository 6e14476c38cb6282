"""The OS edge for process privileges: read our own capability sets and harden the
gateway before it spawns anything. The only module that calls ``prctl``/``capset``.

Why each step (reference: capabilities(7), feasibility probes):

* ``PR_CAP_AMBIENT_CLEAR_ALL`` — systemd's ``AmbientCapabilities=`` puts CAP_SETUID and
  CAP_SETGID in the *ambient* set, which survives ``execve`` of an ordinary binary and a
  non-root -> non-root uid change: without clearing it every plugin could ``setuid(0)``.
* zero the *inheritable* set — ``AmbientCapabilities=`` raises it too; an inheritable bit
  plus a file capability would re-grant the capability to a plugin.
* ``PR_SET_NO_NEW_PRIVS`` — setuid binaries and file capabilities become inert for the
  gateway and everything it spawns (the flag is inherited and cannot be unset).

The gateway keeps its permitted/effective CAP_SETUID+CAP_SETGID: it needs them to drop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass

from ductile.errors import BootRefused
from ductile.privsep.caps import CAP_SETGID, CAP_SETUID, DROP_MASK, ProcStatus, has_drop_capability, parse_status

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once per process. ``find_library`` runs ``ldconfig -p`` in a
    child process on Linux: per job (the Landlock restriction, the subreaper check) that was
    a fork and exec of its own, a fifth of a busy gateway's time."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def read_status(pid: int | str = "self") -> str | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def own_status() -> ProcStatus | None:
    text = read_status()
    try:
        return parse_status(text) if text is not None else None
    except ValueError:
        return None


def probe_capability() -> bool:
    """SPEC §5.1: can this process drop to another uid?"""
    return has_drop_capability(os.geteuid(), read_status())


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise BootRefused(f"{what} failed: {os.strerror(err)}", where="gateway process",
                          fix="run on Linux >= 4.3; if seccomp or a container blocks prctl/capset, allow them")


def clear_inheritable() -> None:
    lib = libc()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(lib.capget(ctypes.byref(header), data), "capget")
    for d in data:
        d.inheritable = 0
    _check(lib.capset(ctypes.byref(header), data), "capset (clear inheritable)")


def raise_drop_ambient() -> None:
    """CAP_SETUID and CAP_SETGID into the *calling thread's* inheritable and ambient sets,
    so that the dropper it execs next (``capsh`` or ``setpriv``, ``privsep.dropper``) holds
    them. Capability sets
    are per thread: this runs only in the throwaway thread that spawns one job, never in a
    thread the gateway keeps (``harden_gateway`` cleared both sets for all of them)."""
    lib = libc()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if lib.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].inheritable |= DROP_MASK
    if lib.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset (raise inheritable)")
    for cap in (CAP_SETUID, CAP_SETGID):
        if lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_RAISE)")


def set_child_subreaper() -> None:
    """Orphans of our children (a plugin's double-fork daemon) re-parent to the gateway
    instead of PID 1: the gateway can find and reap them (see runtime/jobcontain.py)."""
    _check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def is_child_subreaper() -> bool:
    flag = ctypes.c_int(0)
    return libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0


def set_no_new_privs() -> None:
    """no_new_privs on the calling *thread* (Landlock needs it on the thread that restricts)."""
    _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


@dataclass(frozen=True)
class Hardening:
    before: ProcStatus | None
    after: ProcStatus


def harden_gateway() -> Hardening:
    """Clear ambient and inheritable capabilities and set no_new_privs, then verify."""
    before = own_status()
    lib = libc()
    _check(lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    clear_inheritable()
    _check(lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    after = own_status()
    if after is None or after.cap("CapAmb") or after.cap("CapInh") or after.no_new_privs != 1:
        raise BootRefused("could not verify that ambient/inheritable capabilities are clear and no_new_privs is set",
                          where="/proc/self/status", fix="check the kernel and any seccomp policy")
    return Hardening(before, after)
