"""One gateway per state database: an exclusive ``flock`` on ``<state.path>.lock``.

Two gateways on one database would each "recover" the other's running jobs at boot and
run them twice. The lock is taken before the database is opened and held for the life of
the process; the kernel drops it when the process dies, however it dies, so a stale lock
never needs cleaning up. The file holds the holder's pid for the refusal message.

It lives with the state (not in ``serve``) because more than the gateway needs it:
``system restore`` takes the same lock before it replaces a database, so a gateway can
neither be running nor start half-way through; ``system status`` and ``selfcheck`` ask
who holds it (``holder``) without taking it, since even a shared lock held for a moment
would make a gateway starting in that moment refuse to boot.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable

from ductile.errors import BootRefused
from ductile.state.faults import space_or_mount


class InstanceLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_state(cls, state_path: str) -> InstanceLock:
        # realpath: a symlinked state.path must not get a second lock for the same file
        return cls(os.path.realpath(state_path) + ".lock")

    def acquire(self) -> InstanceLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            fault = space_or_mount(err, self.path, "cannot open the instance lock")
            if fault is not None:
                raise BootRefused(fault.message, where=self.path, fix=fault.fix) from None
            raise BootRefused(f"cannot open the instance lock: {err.strerror}", where=self.path,
                              fix="run ductile serve as the account that owns the state directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BootRefused(
                    "another ductile serve is already running on this state database"
                    + (f" (pid {holder})" if holder.isdigit() else ""),
                    where=self.path, fix="stop the other gateway first, or give this one its own state.path") from None
            raise BootRefused(f"cannot lock {self.path}: {err.strerror}", where=self.path,
                              fix="put the state database on a local filesystem") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid of the process holding the lock now, or None; never takes the lock."""
        return lock_holder(self.path)


def parse_proc_locks(lines: Iterable[str], ino: int) -> dict[int, tuple[int, int]]:
    """pid -> (major, minor) of every ``flock`` held on an inode numbered ``ino``, from
    /proc/locks text. Pure. Lines look like ``1: FLOCK  ADVISORY  WRITE 4019 fe:00:2146387 0 EOF``;
    blocked waiters (``1: -> FLOCK ...``) hold nothing and are skipped."""
    out: dict[int, tuple[int, int]] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid, where = fields[4], fields[5].split(":")
        if len(where) != 3 or not pid.isdigit():
            continue
        try:
            major, minor, inode = int(where[0], 16), int(where[1], 16), int(where[2])
        except ValueError:
            continue
        if inode == ino:
            out[int(pid)] = (major, minor)
    return out


def pick_holder(holders: dict[int, tuple[int, int]], dev: tuple[int, int], written: str) -> int | None:
    """The holder among ``holders``: a lock on this device, or (where the kernel reports
    another device number for the same file, as overlay filesystems do) the pid the file
    names. Pure."""
    if written.isdigit() and int(written) in holders:
        return int(written)
    on_dev = sorted(pid for pid, d in holders.items() if d == dev)
    return on_dev[0] if on_dev else None


def lock_holder(path: str) -> int | None:
    """Who holds the instance lock at ``path``, from the kernel's lock table. A pid in the
    file that holds no lock (a gateway that died) is not an answer; unreadable facts give
    None ("no gateway proven"), never a guess."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        written = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            holders = parse_proc_locks(fh, st.st_ino)
    except OSError:
        return None
    return pick_holder(holders, (os.major(st.st_dev), os.minor(st.st_dev)), written)
