"""The backup's OS edge for writing: the database snapshot and the tar.gz itself.

Snapshot: ``VACUUM INTO`` on a connection of its own, read-only, with a busy timeout. It
reads inside one transaction, so the copy is consistent however ``serve`` writes
meanwhile (WAL readers never block the writer), and the copy holds whatever the -wal held:
the -wal and -shm are never archived as such. ``VACUUM INTO`` creates its file with the
umask's mode, so it writes into a private (0700) work directory, and the copy must pass
``PRAGMA integrity_check`` before it is archived.

Archive: written under a hidden temporary name in the destination directory, created
``O_EXCL``, mode 0600; fsynced, then hard-linked to its final name, which fails if
anything exists there (never over an existing file, even one that appeared meanwhile),
and the temporary name is removed. Any failure — a full disk, an unreadable or changed
file, key material where there was none, SIGINT or SIGTERM — removes the temporary file,
so a partial archive never appears under any name. Each member is hashed and scanned
again as it is written and must match the plan.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import signal
import sqlite3
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from urllib.parse import quote

from ductile.durable import fsync_dir
from ductile.system.gather import BackupError, open_member
from ductile.system.plan import MANIFEST_NAME, UID_NAME, BackupPlan, Member, Source
from ductile.system.secretzero import MaterialScanner

BUSY_TIMEOUT_MS = 30_000
CHUNK = 1 << 20
Progress = Callable[[int, str], None]   # (bytes written so far, member being written)


def _fs_error(err: OSError, where: str, doing: str) -> BackupError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackupError(f"no space left {doing}", where=where,
                           fix=f"free space on the filesystem of {where} (df -h), or choose another --to; "
                               "no archive was left behind")
    if err.errno == errno.EROFS:
        return BackupError(f"read-only filesystem {doing}", where=where, fix="choose a writable --to")
    return BackupError(f"{err.strerror or err} {doing}", where=where,
                       fix="check the destination directory's owner and mode; no archive was left behind")


# -- the database snapshot ----------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    path: str
    sha256: str
    size: int


def snapshot_db(state_path: str, workdir: str) -> Snapshot:
    """A consistent, checked copy of the state database inside ``workdir`` (private)."""
    target = os.path.join(workdir, "state.db")
    try:
        conn = sqlite3.connect(f"file:{quote(state_path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("VACUUM INTO ?", (target,))
        finally:
            conn.close()
    except sqlite3.Error as err:
        text = str(err)
        if "full" in text.lower():
            raise BackupError("no space left for the database snapshot", where=workdir,
                              fix=f"free space on the filesystem of {os.path.dirname(workdir)} (df -h), or choose "
                                  "another --to; no archive was left behind") from None
        raise BackupError(f"cannot snapshot the state database: {text}", where=state_path,
                          fix="run the backup as the gateway user; `ductile system selfcheck` checks the "
                              "database") from None
    os.chmod(target, 0o600)
    check = sqlite3.connect(f"file:{quote(target)}?mode=ro", uri=True)
    try:
        rows = [str(r[0]) for r in check.execute("PRAGMA integrity_check(5)")]
    finally:
        check.close()
    if rows != ["ok"]:
        raise BackupError(f"the database snapshot fails PRAGMA integrity_check: {'; '.join(rows)[:200]}",
                          where=state_path, fix="run `ductile system selfcheck`; keep your last good archive")
    digest, size = hashlib.sha256(), 0
    with open(target, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Snapshot(target, digest.hexdigest(), size)


# -- interrupts ---------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """SIGTERM during a backup: unwinds like Ctrl-C so the partial archive is removed."""


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """Turn SIGTERM (systemd stopping the backup unit) into an exception while active."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the archive --------------------------------------------------------------------------

class _CheckedReader(io.RawIOBase):
    """Reads a member's descriptor for tarfile, hashing and scanning what passes through."""

    def __init__(self, fd: int, on_read: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.scan = MaterialScanner()
        self.count = 0
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = os.read(self.fd, len(buffer))
        buffer[:len(data)] = data
        self.digest.update(data)
        self.scan.feed(data)
        self.count += len(data)
        if self.on_read is not None:
            self.on_read(self.count)
        return len(data)


def _info(name: str, *, size: int = 0, mode: int = 0o600, mtime: float = 0.0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = mode & 0o777
    info.mtime = int(mtime)
    info.uid = info.gid = 0        # owners are decided by restore, from the layout
    info.uname = info.gname = ""
    return info


def _add_member(tar: tarfile.TarFile, member: Member, sources: tuple[Source, ...], snapshot: Snapshot | None,
                on_read: Callable[[int], None] | None = None) -> None:
    if member.kind == "dir":
        tar.addfile(_info(member.arcname, mode=member.mode, mtime=member.mtime, directory=True))
        return
    if member.role == "db":
        assert snapshot is not None
        fd_cm: contextlib.AbstractContextManager[int] = _open_plain(snapshot.path)
    else:
        fd_cm = open_member(member, sources)
    with fd_cm as fd:
        reader = _CheckedReader(fd, on_read)
        try:
            tar.addfile(_info(member.arcname, size=member.size, mode=member.mode, mtime=member.mtime),
                        io.BufferedReader(reader, CHUNK))
        except OSError:
            if reader.count >= member.size:
                raise
            # tarfile: "unexpected end of data" -- the file shrank after it was planned
        more = os.read(fd, 1)
    if reader.scan.found:
        raise BackupError("now holds age key material, which is never archived", where=member.source,
                          fix="remove the key material from that file, then retry; no archive was left behind")
    if more or reader.count != member.size or reader.digest.hexdigest() != member.sha256:
        raise BackupError("changed while the backup was being written", where=member.source,
                          fix="retry the backup when nothing is changing it; no archive was left behind")


@contextlib.contextmanager
def _open_plain(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _ticker(progress: Progress, base: int, name: str) -> Callable[[int], None]:
    """Progress within one member: bytes of it read so far, on top of the members before."""
    return lambda n: progress(base + n, name)


class _NotOurs(Exception):
    """The temporary name was taken: that file is someone else's and must not be removed."""


def write_archive(dest: str, plan: BackupPlan, manifest: bytes, uid_txt: bytes, snapshot: Snapshot | None,
                  progress: Progress | None = None) -> None:
    """Write ``plan`` to ``dest`` (which must not exist); on any failure nothing remains.

    The cleanup covers the creation itself: a SIGTERM that lands between ``open`` returning
    and the next line would otherwise leave the new file behind."""
    directory = os.path.dirname(os.path.abspath(dest))
    temp = os.path.join(directory, f".{os.path.basename(dest)}.{secrets.token_hex(6)}.partial")
    try:
        _write(temp, dest, plan, manifest, uid_txt, snapshot, progress)
    except _NotOurs:
        raise BackupError("a file with the archive's temporary name exists", where=temp,
                          fix="remove it if it is a leftover, then retry") from None
    except OSError as err:
        _remove(temp)
        raise _fs_error(err, dest, "writing the archive") from None
    except BaseException:
        _remove(temp)
        raise


def _write(temp: str, dest: str, plan: BackupPlan, manifest: bytes, uid_txt: bytes, snapshot: Snapshot | None,
           progress: Progress | None) -> None:
    directory = os.path.dirname(temp)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise _NotOurs() from None
    except OSError as err:
        raise _fs_error(err, directory, "creating the archive") from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
            tar.addfile(_info(MANIFEST_NAME, size=len(manifest)), io.BytesIO(manifest))
            tar.addfile(_info(UID_NAME, size=len(uid_txt)), io.BytesIO(uid_txt))
            done = 0
            for member in plan.members:
                tick = None if progress is None else _ticker(progress, done, member.arcname)
                _add_member(tar, member, plan.sources, snapshot, tick)
                done += member.size
                if progress is not None:
                    progress(done, member.arcname)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(temp, dest)
    except FileExistsError:
        raise BackupError("a file appeared at the destination while the backup ran; it was left alone",
                          where=dest, fix="choose another --to") from None
    except OSError as err:
        raise _fs_error(err, dest, "placing the archive") from None
    os.unlink(temp)
    fsync_dir(directory)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def workdir_beside(dest: str) -> Iterator[str]:
    """A private (0700) scratch directory next to ``dest``, removed with everything in it
    (also when an interrupt lands right after it was made)."""
    directory = os.path.dirname(os.path.abspath(dest))
    work = os.path.join(directory, f".{os.path.basename(dest)}.{secrets.token_hex(6)}.work")
    ours = True
    try:
        try:
            os.mkdir(work, 0o700)
        except FileExistsError:
            ours = False
            raise BackupError("a directory with the backup's work name exists", where=work,
                              fix="remove it if it is a leftover, then retry") from None
        except OSError as err:
            ours = False
            raise _fs_error(err, directory, "creating a work directory") from None
        yield work
    finally:
        if ours:
            with contextlib.suppress(OSError):
                for name in os.listdir(work):
                    _remove(os.path.join(work, name))
                os.rmdir(work)
