"""One gateway per state database: an exclusive ``flock`` on ``<state.path>.lock``.

Two gateways on one database would each "recover" the other's running jobs at boot and
run them twice. The lock is taken before the database is opened and held for the life of
the process; the kernel drops it when the process dies, however it dies, so a stale lock
never needs cleaning up. The file holds the holder's pid for the refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import os

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
