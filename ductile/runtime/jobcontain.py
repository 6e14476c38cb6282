"""The sweep edge: per-account locks shared by every ductile process on the host, the
account-wide sweep, the kill of one job's session, and reaping orphans the gateway
inherited as a child subreaper. Process facts come from psutil.

Why a lock file and not a counter: ``plugin run``, ``account verify`` and ``serve`` are
separate processes. A counter inside one of them cannot know that another is running a
job of the same account, so a sweep after one job would kill the other's. Every job
instead holds ``LOCK_SH`` on ``<state dir>/locks/uid-<uid>.lock`` while it runs; a sweep
takes ``LOCK_EX|LOCK_NB`` and only then kills every process of the account. The files
live in the gateway's own 0700 directory: an account cannot take the lock itself to keep
its leftovers alive.

The sweep after a job is cheap when nothing can be left: the gateway is a child subreaper,
so every process a job leaves behind is the gateway's descendant and, once the job's leader
is reaped, some leftover is the gateway's direct child. No child at all (``waitid`` says
ECHILD) proves the job left nothing; otherwise the job marks the account's lock file
"dirty" and whoever next holds it exclusively runs the kill helper and clears the mark (a
job that could not sweep because another job of the account runs leaves the mark for it).

Why ``kill -KILL -1`` run *as the account* (the kill helper): it is the only complete
sweep (it reaches processes that left the process group and the session, and double-fork
daemons re-parented anywhere), and it can signal exactly what the account could, nothing
more — a cap-only gateway has no CAP_KILL and needs no more.
"""

from __future__ import annotations

import fcntl
import os
import signal
from types import TracebackType

import psutil

from ductile.privsep import kernel
from ductile.runtime.launch import registry, run_helper

KILL_HELPER = "/bin/kill"
LOCK_DIR = "locks"


def lock_dir_for(state_path: str) -> str:
    return os.path.join(os.path.dirname(state_path), LOCK_DIR)


def lock_path(lock_dir: str, uid: int) -> str:
    return os.path.join(lock_dir, f"uid-{uid}.lock")


def _give_to_parent_owner(path: str) -> None:
    """Root creating in the gateway's directory: hand the entry to the directory's owner,
    so the cap-only gateway can open what a root ``plugin run`` created."""
    if os.geteuid() != 0:
        return
    st = os.stat(os.path.dirname(path))
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def ensure_lock_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _give_to_parent_owner(path)


class AccountLock:
    """One open description of an account's lock file (flock locks belong to it)."""

    def __init__(self, path: str) -> None:
        created = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        if created:
            _give_to_parent_owner(path)

    def hold_shared(self) -> None:
        """A job of this account runs (blocks only while a sweep is killing)."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def try_exclusive(self) -> bool:
        """True when no job of the account runs anywhere on the host (converts a held
        shared lock; the kernel drops it first)."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def mark_dirty(self) -> None:
        """Leftovers may exist: the next exclusive holder must sweep."""
        os.pwrite(self.fd, b"1", 0)

    def is_dirty(self) -> bool:
        return os.pread(self.fd, 1, 0) == b"1"

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> AccountLock:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def account_processes(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    out = []
    for p in psutil.process_iter(["uids", "status"], ad_value=None):
        uids, status = p.info["uids"], p.info["status"]
        if uids is not None and uids.real == uid and status != psutil.STATUS_ZOMBIE:
            out.append(p.pid)
    return out


def sweep_account(uid: int, gid: int, *, count: bool = True) -> int:
    """Kill every process of the account (kill -KILL -1 as the account). Call only while
    holding the account's lock exclusively. ``count``: find out first how many there are
    (a scan of every process: boot and shutdown); without it the helper always runs — a
    fork+exec, whatever the number of processes on the host (after every job) — and the
    result is -1 (not counted)."""
    if not count:
        run_helper([KILL_HELPER, "-KILL", "--", "-1"], uid=uid, gid=gid)
        return -1
    left = account_processes(uid)
    if left:
        run_helper([KILL_HELPER, "-KILL", "--", "-1"], uid=uid, gid=gid)
    return len(left)


def sweep_if_alone(path: str, uid: int, gid: int) -> int | None:
    """Sweep the account unless a job of it runs somewhere (None then)."""
    with AccountLock(path) as lock:
        if not lock.try_exclusive():
            return None
        n = sweep_account(uid, gid)
        lock.clear()
        return n


def no_leftovers_possible() -> bool:
    """True only when this process is a subreaper and has no child at all: then the job
    just reaped left nothing behind (see the module doc)."""
    if not kernel.is_child_subreaper():
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def end_of_job_sweep(lock: AccountLock, uid: int, gid: int) -> bool | None:
    """After a job in sweep mode: True when the account was swept, False when nothing could
    be left, None when another job of the account runs (the sweep is left to it)."""
    if not no_leftovers_possible():
        lock.mark_dirty()
    if not lock.try_exclusive():
        return None
    if not lock.is_dirty():
        return False
    sweep_account(uid, gid, count=False)
    lock.clear()
    return True


def session_members(leader: int, uid: int) -> list[int]:
    """Live processes of ``uid`` still in the job's session or process group (the leader's
    pid is both ids: every job starts a new session). Session and group ids first (two
    syscalls a pid), process details only for those: cheap on a busy host."""
    out = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) != leader and os.getpgid(pid) != leader:
                continue
            proc = psutil.Process(pid)
            if proc.uids().real == uid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except (OSError, psutil.Error):
            continue
    return out


def kill_pids(pids: list[int], uid: int | None, gid: int | None) -> None:
    """SIGKILL ``pids``: directly where permitted, else through the kill helper as the account."""
    denied = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            denied.append(pid)
    if denied and uid is not None:
        run_helper([KILL_HELPER, "-KILL", "--", *map(str, denied)], uid=uid, gid=gid)


def kill_session(leader: int, uid: int | None, gid: int | None) -> int:
    members = session_members(leader, os.geteuid() if uid is None else uid)
    kill_pids(members, uid, gid)
    return len(members)


def _zombie_child() -> int | None:
    """Peek (without reaping) at one exited child: one syscall, no scan."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return info.si_pid if info is not None else None


def reap_orphans() -> int:
    """Collect zombie children the gateway inherited as a subreaper (never one a Popen
    still waits for). Returns how many."""
    lock, tracked = registry()
    reaped = 0
    with lock:
        while (pid := _zombie_child()) is not None and pid not in tracked:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # its own waiter got there first (a Popen not made by launch)
                continue
            reaped += 1
        if pid is None:
            return reaped
        try:  # a Popen's own exited child is first in line: look past it
            children = psutil.Process().children()
        except psutil.Error:
            return reaped
        for child in children:
            if child.pid in tracked:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    continue
                if os.waitpid(child.pid, os.WNOHANG)[0]:
                    reaped += 1
            except (psutil.Error, ChildProcessError):
                continue
    return reaped
