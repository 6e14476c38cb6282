"""The Landlock edge: ask the kernel for its ABI, and start a process under a ruleset.

Why a short-lived thread: ``landlock_restrict_self`` restricts only the calling thread
(and what it creates afterwards). A thread that restricts itself and then calls
``Popen`` gives the child exactly that domain, while every other thread of the gateway
keeps full access; no Python code runs between fork and exec beyond what ``subprocess``
already runs, and it stays the one spawn path. The thread is thrown away after the spawn
(a domain cannot be lifted). Each job gets a fresh domain, so with scoping (ABI 6) one
job cannot signal another's processes, even of the same account; the gateway's kill
helper is started from an unrestricted thread and can.

Why in-tree ctypes and not the PyPI ``landlock`` package: 1.0.0.dev5 is alpha and knows
only filesystem rules (no ABI 4 TCP rules, no ABI 6 scoping), which are half of what a
plugin's allowlist needs here; the three syscalls are a few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

from ductile.privsep import kernel
from ductile.privsep.landlock import FILE_RIGHTS, NET_BIND_TCP, NET_CONNECT_TCP, Ruleset

T = TypeVar("T")

SYS_CREATE_RULESET = 444   # the same number on every architecture (added after the syscall table was unified)
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class LandlockError(OSError):
    """A ruleset could not be built or applied (names the path or step)."""


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when absent or disabled at boot."""
    libc = kernel.libc()
    v = int(libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                         ctypes.c_uint32(CREATE_RULESET_VERSION)))
    return v if v > 0 else 0


def _fail(what: str) -> LandlockError:
    err = ctypes.get_errno()
    return LandlockError(err, f"{what}: {os.strerror(err)}")


def restrict_this_thread(ruleset: Ruleset) -> None:
    """Build ``ruleset`` in the kernel and enforce it on the calling thread."""
    libc = kernel.libc()
    attr = _RulesetAttr(ruleset.handled_fs, ruleset.handled_net, ruleset.scoped)
    fd = int(libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                          ctypes.c_uint32(0)))
    if fd < 0:
        raise _fail("landlock_create_ruleset")
    try:
        for rule in ruleset.paths:
            try:
                pfd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as err:
                if rule.required:
                    raise LandlockError(err.errno or 0, f"Landlock rule {rule.path} ({rule.why}): {err.strerror}") from None
                continue
            try:
                access = rule.access
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    access &= FILE_RIGHTS  # a rule on a file takes only file rights (else EINVAL)
                beneath = _PathBeneath(access, pfd)
                if libc.syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(fd), ctypes.c_int(RULE_PATH_BENEATH),
                                ctypes.byref(beneath), ctypes.c_uint32(0)) != 0:
                    raise _fail(f"landlock_add_rule {rule.path}")
            finally:
                os.close(pfd)
        for ports, right in ((ruleset.connect, NET_CONNECT_TCP), (ruleset.bind, NET_BIND_TCP)):
            for port in ports:
                net = _NetPort(right, port)
                if libc.syscall(ctypes.c_long(SYS_ADD_RULE), ctypes.c_int(fd), ctypes.c_int(RULE_NET_PORT),
                                ctypes.byref(net), ctypes.c_uint32(0)) != 0:
                    raise _fail(f"landlock_add_rule tcp port {port}")
        kernel.set_no_new_privs()  # per thread; an enforcing gateway already has it
        if libc.syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise _fail("landlock_restrict_self")
    finally:
        os.close(fd)


def in_restricted_thread(ruleset: Ruleset, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a spawn) in a fresh thread that first restricted itself to ``ruleset``."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            restrict_this_thread(ruleset)
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    t = threading.Thread(target=run, name="landlock-spawn", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
