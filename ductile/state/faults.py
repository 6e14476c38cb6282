"""What went wrong with the state database, and the fix that matches the cause. Pure.

SQLite reports a full disk, a read-only mount, a damaged file and a busy lock through a
handful of result codes; the operator needs a different action for each. Mixing them up
is worse than saying nothing ("writable by uid 0" for a damaged file sends the operator to
chmod a file that is fine), so the diagnosis is one table, fed with plain facts gathered by
``fs_facts`` (the only function here that looks at the OS):

    cause            SQLite code / errno                  transient  fix
    disk_full        SQLITE_FULL / ENOSPC, EDQUOT         yes        free space (df -h DIR)
    read_only        SQLITE_READONLY / EROFS on a ro fs   yes        remount read-write
    permission       SQLITE_READONLY, SQLITE_PERM, EACCES yes        run as the owner
    locked           SQLITE_BUSY, SQLITE_LOCKED           yes        find the process holding it
    not_a_database   SQLITE_NOTADB                        no         restore from a backup / move aside
    corrupt          SQLITE_CORRUPT                       no         restore from a backup / move aside
    io               SQLITE_IOERR, EIO                    yes        check the disk (dmesg)
    missing          SQLITE_CANTOPEN, ENOENT              yes        check state.path and its directory
    other            anything else                        no         see the message

*transient* says whether waiting may help without anyone touching the database file:
serve keeps a finished job's outcome and retries while the cause is transient, and reports
itself ``degraded`` with the cause meanwhile.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ductile.config.units import format_size

TRANSIENT = frozenset({"disk_full", "read_only", "permission", "locked", "io", "missing"})
DAMAGED = frozenset({"not_a_database", "corrupt"})


@dataclass(frozen=True)
class FsFacts:
    """What the diagnosis needs to know about the file and the filesystem holding it."""

    path: str
    mountpoint: str
    read_only_fs: bool
    free_bytes: int | None
    owner_uid: int | None
    euid: int
    side_files: tuple[str, ...] = ()  # the -wal / -shm files that exist beside it


@dataclass(frozen=True)
class Fault:
    cause: str
    message: str
    fix: str

    @property
    def transient(self) -> bool:
        return self.cause in TRANSIENT


_SQLITE_CAUSES = (
    ("SQLITE_FULL", "disk_full"), ("SQLITE_NOTADB", "not_a_database"), ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_BUSY", "locked"), ("SQLITE_LOCKED", "locked"), ("SQLITE_IOERR", "io"),
    ("SQLITE_CANTOPEN", "missing"), ("SQLITE_PERM", "permission"), ("SQLITE_READONLY", "read_only"),
)
_TEXT_CAUSES = (
    ("database or disk is full", "disk_full"), ("file is not a database", "not_a_database"),
    ("malformed", "corrupt"), ("locked", "locked"), ("busy", "locked"), ("readonly", "read_only"),
    ("disk i/o error", "io"), ("unable to open", "missing"),
)
_ERRNO_CAUSES = {
    errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only", errno.EACCES: "permission",
    errno.EPERM: "permission", errno.EIO: "io", errno.ENOENT: "missing",
}


def cause_of_sqlite(errorname: str | None, text: str) -> str:
    """The cause for an ``sqlite3.Error`` (its ``sqlite_errorname``, else its text)."""
    name = errorname or ""
    for prefix, cause in _SQLITE_CAUSES:
        if name == prefix or name.startswith(prefix + "_"):
            return cause
    lowered = text.lower()
    for needle, cause in _TEXT_CAUSES:
        if needle in lowered:
            return cause
    return "other"


def cause_of_errno(number: int | None) -> str:
    return _ERRNO_CAUSES.get(number or 0, "other")


def move_aside_command(facts: FsFacts) -> str:
    """Shell that moves a damaged database and its side files out of the way, keeping them."""
    files = [facts.path, *facts.side_files]
    return "; ".join(f"mv {f} {f}.damaged" for f in files)


def diagnose(cause: str, detail: str, facts: FsFacts) -> Fault:
    """The message and fix for ``cause`` (from ``cause_of_sqlite``/``cause_of_errno``)."""
    path, directory = facts.path, os.path.dirname(facts.path) or "."
    if cause == "read_only" and not facts.read_only_fs:
        cause = "permission"  # SQLITE_READONLY on a writable mount: the file is not ours to write
    elif cause in ("missing", "permission") and facts.read_only_fs:
        cause = "read_only"  # SQLite cannot create its -shm on a read-only mount: says "unable to open"
    if cause == "disk_full":
        free = f" ({format_size(facts.free_bytes)} free)" if facts.free_bytes is not None else ""
        return Fault(cause, f"the filesystem holding {path} is full{free}: {detail}",
                     f"free space on {facts.mountpoint} (df -h {directory}), then retry")
    if cause == "read_only":
        return Fault(cause, f"{facts.mountpoint} is mounted read-only, so {path} cannot be written: {detail}",
                     f"remount it read-write (mount -o remount,rw {facts.mountpoint}) or point state.path at a "
                     "writable filesystem")
    if cause == "permission":
        owner = f" (owned by uid {facts.owner_uid})" if facts.owner_uid is not None else ""
        who = f"uid {facts.owner_uid}" if facts.owner_uid is not None else "the gateway account"
        return Fault(cause, f"uid {facts.euid} may not write {path}{owner}: {detail}",
                     f"run ductile as {who}, the account that owns it")
    if cause in DAMAGED:
        what = "is not an SQLite database" if cause == "not_a_database" else "is damaged"
        return Fault(cause, f"the state database {path} {what}: {detail}",
                     "stop ductile and restore the file from a backup; to start an empty ledger instead, "
                     f"move it aside: {move_aside_command(facts)}")
    if cause == "locked":
        return Fault(cause, f"the state database {path} stayed locked by another connection: {detail}",
                     f"find the process holding it (fuser -v {path}) and stop it if it is stuck")
    if cause == "io":
        return Fault(cause, f"the disk reported an I/O error on {path}: {detail}",
                     "check the disk and the kernel log (dmesg); restore the file from a backup if it is damaged")
    if cause == "missing":
        return Fault(cause, f"cannot open {path}: {detail}",
                     f"check state.path in the config and that {directory} exists and is writable by uid {facts.euid}")
    return Fault("other", f"state database error on {path}: {detail}",
                 "see the message; rerun with --debug for a traceback")


def space_or_mount(err: OSError, path: str, doing: str) -> Fault | None:
    """The Fault for a full disk or a read-only mount under ``path``, else None (the caller's
    own message about owners and modes then fits)."""
    cause = cause_of_errno(err.errno)
    if cause not in ("disk_full", "read_only"):
        return None
    return diagnose(cause, f"{doing}: {err.strerror}", fs_facts(path))


def os_fault(err: OSError) -> Fault:
    """An OSError from anywhere (a vault write, a lock file...) as a Fault for one stderr line:
    the space and mount causes get their fix, anything else says what failed on which file."""
    path = err.filename if isinstance(err.filename, str) else None
    cause = cause_of_errno(err.errno)
    detail = err.strerror or type(err).__name__
    if path is not None and cause in ("disk_full", "read_only"):
        return diagnose(cause, detail, fs_facts(path))
    where = f"{path}: " if path else ""
    return Fault(cause, f"{where}{detail}", "see the message; rerun with --debug for a traceback")


def mount_point(path: str) -> str:
    """The mount point holding ``path`` (or its nearest existing ancestor)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    while probe != "/" and not os.path.ismount(probe):
        probe = os.path.dirname(probe)
    return probe


def fs_facts(path: str) -> FsFacts:
    """Gather the facts for ``path`` (edge: stat/statvfs; any failure leaves a field unknown)."""
    path = os.path.abspath(path)
    mount = mount_point(path)
    read_only, free = False, None
    try:
        vfs = os.statvfs(mount if not os.path.exists(os.path.dirname(path)) else os.path.dirname(path))
        read_only = bool(vfs.f_flag & os.ST_RDONLY)
        free = vfs.f_bavail * vfs.f_frsize
    except OSError:
        pass
    owner: int | None = None
    try:
        owner = os.stat(path).st_uid
    except OSError:
        pass
    sides = tuple(path + s for s in ("-wal", "-shm") if os.path.lexists(path + s))
    return FsFacts(path, mount, read_only, free, owner, os.geteuid(), sides)
