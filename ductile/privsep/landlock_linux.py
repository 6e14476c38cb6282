"""The Landlock edge: ask the kernel for its ABI, and restrict a thread to a ruleset (the
spawn edge starts the job from that thread: ``privsep.spawnthread``, ``runtime.spawn``).

Why a short-lived thread: ``landlock_restrict_self`` restricts only the calling thread
(and what it creates afterwards). A thread that restricts itself and then calls
``Popen`` gives the child exactly that domain, while every other thread of the gateway
keeps full access; no Python code runs between fork and exec beyond what ``subprocess``
already runs, and it stays the one spawn path. The thread is thrown away after the spawn
(a domain cannot be lifted). Each job gets a fresh domain, so with scoping (ABI 6) one
job cannot signal another's processes, even of the same account; the gateway's kill
helper is started from an unrestricted thread and can.

Why the kernel ruleset is kept between jobs: building one is ~40 ``open(O_PATH)`` +
``landlock_add_rule`` calls, about a millisecond per job in a busy gateway, and it comes
out the same for every job of a plugin and account. ``landlock_restrict_self`` makes a
*new* domain from it each time, so jobs still never share a domain (scoping holds between
two jobs built from one ruleset). A rule holds the inode its path named when it was built,
not the path; so before each job every rule's path is stat'ed, and a path that now names
another file or directory (``/etc/resolv.conf`` rewritten by rename, a state_dir restored,
a rule's path created since) means a new kernel ruleset is built. The ruleset itself, the
data, is still decided afresh for every job (``runtime.confine``).

Why in-tree ctypes and not the PyPI ``landlock`` package: 1.0.0.dev5 is alpha and knows
only filesystem rules (no ABI 4 TCP rules, no ABI 6 scoping), which are half of what a
plugin's allowlist needs here; the three syscalls are a few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ductile.privsep import kernel
from ductile.privsep.landlock import FILE_RIGHTS, NET_BIND_TCP, NET_CONNECT_TCP, Ruleset

SYS_CREATE_RULESET = 444   # the same number on every architecture (added after the syscall table was unified)
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2
CACHE_MAX = 64             # kernel rulesets kept (one per plugin and account, in practice)


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


Identity = tuple[int, int] | None   # (st_dev, st_ino) of a rule's path as the kernel holds it; None: skipped


@dataclass
class _Built:
    """A ruleset built in the kernel (its fd), with the identity of every path its rules hold."""

    fd: int
    ids: tuple[Identity, ...]
    users: int = 0
    retired: bool = False


_built: OrderedDict[Ruleset, _Built] = OrderedDict()
_built_lock = threading.Lock()


def _build(ruleset: Ruleset) -> _Built:
    """Create ``ruleset`` in the kernel: one O_PATH open and one rule per path."""
    libc = kernel.libc()
    attr = _RulesetAttr(ruleset.handled_fs, ruleset.handled_net, ruleset.scoped)
    fd = int(libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                          ctypes.c_uint32(0)))
    if fd < 0:
        raise _fail("landlock_create_ruleset")
    ids: list[Identity] = []
    try:
        for rule in ruleset.paths:
            try:
                pfd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as err:
                if rule.required:
                    raise LandlockError(err.errno or 0, f"Landlock rule {rule.path} ({rule.why}): {err.strerror}") from None
                ids.append(None)
                continue
            try:
                st = os.fstat(pfd)
                ids.append((st.st_dev, st.st_ino))
                access = rule.access
                if not stat.S_ISDIR(st.st_mode):
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
    except BaseException:
        os.close(fd)
        raise
    return _Built(fd, tuple(ids))


def identities(ruleset: Ruleset) -> tuple[Identity, ...]:
    """What every rule's path is now (following symlinks, as the O_PATH open does)."""
    out: list[Identity] = []
    for rule in ruleset.paths:
        try:
            st = os.stat(rule.path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino))
    return tuple(out)


def _retire(built: _Built) -> None:
    """No job takes ``built`` any more; its fd closes when the last user is done (lock held)."""
    built.retired = True
    if built.users == 0:
        os.close(built.fd)


def _checkout(ruleset: Ruleset) -> _Built:
    """The kernel ruleset for ``ruleset``: the one built for an earlier job when every path
    is still the file or directory it was built on, else a new one."""
    now = identities(ruleset)
    with _built_lock:
        cached = _built.get(ruleset)
        if cached is not None and cached.ids == now:
            cached.users += 1
            _built.move_to_end(ruleset)
            return cached
    fresh = _build(ruleset)  # outside the lock: ~40 opens, and the other worker need not wait
    with _built_lock:
        fresh.users = 1
        old = _built.pop(ruleset, None)
        if old is not None:
            _retire(old)
        if fresh.ids == now:
            _built[ruleset] = fresh
            while len(_built) > CACHE_MAX:
                _retire(_built.popitem(last=False)[1])
        else:  # a path changed while it was built: use it once, keep nothing
            fresh.retired = True
    return fresh


def _checkin(built: _Built) -> None:
    with _built_lock:
        built.users -= 1
        if built.retired and built.users == 0:
            os.close(built.fd)


def restrict_this_thread(ruleset: Ruleset) -> None:
    """Enforce ``ruleset`` on the calling thread: a new domain, whether the kernel ruleset
    it is made from was built now or for an earlier job (see the module doc)."""
    built = _checkout(ruleset)
    try:
        kernel.set_no_new_privs()  # per thread; an enforcing gateway already has it
        if kernel.libc().syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(built.fd), ctypes.c_uint32(0)) != 0:
            raise _fail("landlock_restrict_self")
    finally:
        _checkin(built)


def forget_built() -> None:
    """Close every cached kernel ruleset not in use (tests; a reload that changes rules)."""
    with _built_lock:
        while _built:
            _retire(_built.popitem()[1])
