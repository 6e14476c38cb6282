"""Restore's OS edge: read and verify the archive, look at the destinations, write.

Two passes over the archive. The first verifies everything — the manifest, each header,
each member's name, type, size and sha256, and that nothing is missing or extra — and
writes nothing, so a hostile or damaged archive is refused with the disk untouched. The
second stages each file under a hidden temporary name in its destination directory,
re-verifying its hash as it goes; only when every file is staged are they renamed into
place (existing ones first kept as ``.bak``). A failure while staging removes the staged
files and the directories it created.

Destination directories are opened from ``/`` one component at a time with
``O_NOFOLLOW``: a symlink anywhere on the way is refused, never followed, so an archive
cannot be steered through a link into a directory it does not name.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import os
import posixpath
import pwd
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ductile.errors import BootRefused, UsageError
from ductile.state.instance import InstanceLock
from ductile.system.manifest import Limits, Manifest, RestoreRefused, parse_manifest
from ductile.system.plan import MANIFEST_NAME, UID_NAME
from ductile.system.restore import DestFact, RestorePlan, Step, destination
from ductile.system.tarread import StrictTarReader

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Walking needs only search permission (a 0711 state directory is not readable by the
# gateway's accounts, nor an operator's 0711 /tmp/x by the gateway): O_PATH descriptors.
_WALK_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_UID_TXT = 4096


def _refuse(where: str, message: str, fix: str = "use an archive made by `ductile system backup`; this one is "
                                                 "damaged or was altered") -> RestoreRefused:
    return RestoreRefused(message, where=where, fix=fix)


@contextlib.contextmanager
def _reader(path: str, limits: Limits) -> Iterator[StrictTarReader]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        raise _refuse(path, f"cannot open the archive: {err.strerror}", "check the path and that it is readable") \
            from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refuse(path, "the archive is not a regular file", "pass the .tar.gz file backup wrote")
        yield StrictTarReader(fh, limits, path)


def _read_all(reader: StrictTarReader) -> bytes:
    return b"".join(reader.chunks())


def _open_meta(reader: StrictTarReader, limits: Limits, path: str) -> Manifest:
    first = reader.next()
    if first is None or first.name != MANIFEST_NAME or first.kind != "file":
        raise _refuse(path, f"the archive does not start with {MANIFEST_NAME}: not made by `ductile system backup`")
    if first.size > limits.max_manifest:
        raise _refuse(path, f"{MANIFEST_NAME} is larger than {limits.max_manifest} bytes")
    manifest = parse_manifest(_read_all(reader), limits)
    second = reader.next()
    if second is None or second.name != UID_NAME or second.kind != "file" or second.size > MAX_UID_TXT:
        raise _refuse(path, f"{UID_NAME} is missing after the manifest")
    code = _read_all(reader).split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if code != (manifest.backup_uid or "none: the age key could not be read when this archive was made"):
        raise _refuse(UID_NAME, "the pairing code in uid.txt does not match the manifest's backup_uid")
    return manifest


def verify_archive(path: str, limits: Limits = Limits()) -> Manifest:
    """Pass one: check every byte of the archive against its manifest; write nothing."""
    with _reader(path, limits) as reader:
        manifest = _open_meta(reader, limits, path)
        expected = {m.path: m for m in manifest.members}
        seen: set[str] = set()
        while (member := reader.next()) is not None:
            row = expected.get(member.name)
            if row is None or member.name in seen:
                raise _refuse(member.name, "a member the manifest does not list (or lists once and the archive "
                                           "holds twice)")
            seen.add(member.name)
            if member.kind != row.kind:
                raise _refuse(member.name, f"the archive holds a {member.kind}, the manifest a {row.kind}")
            if member.kind == "file":
                if member.size != row.size:
                    raise _refuse(member.name, f"{member.size} bytes, the manifest says {row.size}")
                digest = hashlib.sha256()
                for chunk in reader.chunks():
                    digest.update(chunk)
                if digest.hexdigest() != row.sha256:
                    raise _refuse(member.name, "sha256 does not match the manifest (damaged or altered)")
        missing = [p for p in expected if p not in seen]
        if missing:
            raise _refuse(missing[0], f"listed in the manifest but not in the archive ({len(missing)} missing)")
    return manifest


# -- destinations ---------------------------------------------------------------------------

def _sha256_at(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def dest_facts(manifest: Manifest, to_dir: str | None) -> dict[str, DestFact]:
    out: dict[str, DestFact] = {}
    for m in manifest.members:
        dest = destination(m.source, to_dir)
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            out[dest] = DestFact(False)
            continue
        except OSError as err:
            raise _refuse(dest, f"cannot look at the destination: {err.strerror}",
                          "run the restore as root or as the gateway user") from None
        kind = ("file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                else "symlink" if stat.S_ISLNK(st.st_mode) else "other")
        digest = _sha256_at(dest) if kind == "file" and st.st_size == m.size else None
        wal = False
        if m.role == "db":
            with contextlib.suppress(OSError):
                wal = os.lstat(dest + "-wal").st_size > 0
        out[dest] = DestFact(True, kind, digest, wal)
    return out


def resolve_gateway(option: str | None, db_dest: str) -> tuple[tuple[int, int], str]:
    """(uid, gid) the secret surface is given to, and where that answer came from."""
    if option:
        user, _, group = option.partition(":")
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            if not user.isdigit():
                raise UsageError(f"no such user {user!r}", where="--owner", fix="name an existing user, or a uid") \
                    from None
            uid = gid = int(user)
        if group:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise UsageError(f"no such group {group!r}", where="--owner", fix="name an existing group, or a gid") \
                    from None
        return (uid, gid), "--owner"
    if os.geteuid() != 0:
        return (os.geteuid(), os.getegid()), "the user running the restore"
    probe = posixpath.dirname(db_dest)
    while True:
        try:
            st = os.lstat(probe)
            if stat.S_ISDIR(st.st_mode):
                if st.st_uid != 0:
                    return (st.st_uid, st.st_gid), f"the owner of {probe}"
                return (0, 0), f"root: {probe} belongs to root (pass --owner to give the files to the gateway user)"
        except FileNotFoundError:
            pass
        if probe == "/":
            return (0, 0), "root: pass --owner to give the files to the gateway user"
        probe = posixpath.dirname(probe)


# -- writing --------------------------------------------------------------------------------

def _chown(fd: int, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, uid, gid)


def _set_owner_mode(dfd: int, name: str, mode: int, uid: int, gid: int) -> None:
    """Exact mode (mkdir's is filtered by the umask), then the owner, on a directory just made."""
    fd = os.open(name, _OPEN_DIR, dir_fd=dfd)
    try:
        os.fchmod(fd, mode)
        _chown(fd, uid, gid)
    finally:
        os.close(fd)


def _fsync_dir(dfd: int) -> None:
    try:
        fd = os.open(".", _OPEN_DIR, dir_fd=dfd)
    except PermissionError:
        return  # a directory we may write but not read: the rename is done, only its flush is skipped
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_dir(path: str, create: tuple[int, int, int] | None, created: list[str]) -> int:
    """Descriptor of directory ``path``, walked from / with O_NOFOLLOW; missing components
    are created with ``create`` = (mode, uid, gid) and remembered in ``created``."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    here = "/"
    try:
        for part in [p for p in path.split("/") if p]:
            here = posixpath.join(here, part)
            try:
                nxt = os.open(part, _WALK_DIR, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                mode, uid, gid = create
                os.mkdir(part, mode, dir_fd=fd)
                created.append(here)
                _set_owner_mode(fd, part, mode, uid, gid)
                nxt = os.open(part, _WALK_DIR, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(here, "is a symlink or not a directory; restore never follows links on the way "
                                        "to a destination", "move it away, or restore with --to DIR") from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _free_bak(dfd: int, base: str, sides: tuple[str, ...]) -> str:
    n = 0
    while True:
        name = f"{base}.bak" + (f".{n}" if n else "")
        if not any(_lexists(dfd, name + s) for s in ("",) + sides):
            return name
        n += 1


def _lexists(dfd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dfd)
        return True
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Applied:
    written: tuple[str, ...]
    kept: tuple[tuple[str, str], ...]     # (destination, its .bak)
    created_dirs: tuple[str, ...]


def _make_dir(step: Step, created: list[str]) -> None:
    """Create the directory ``step.dest``: its parents by the parent policy, itself by its own."""
    dfd = _open_dir(posixpath.dirname(step.dest), (step.parent_mode, step.parent_uid, step.parent_gid), created)
    try:
        base = posixpath.basename(step.dest)
        os.mkdir(base, step.mode, dir_fd=dfd)
        created.append(step.dest)
        _set_owner_mode(dfd, base, step.mode, step.uid, step.gid)
    finally:
        os.close(dfd)


def _stage(reader: StrictTarReader, step: Step, mtime: float, created: list[str]) -> str:
    dfd = _open_dir(posixpath.dirname(step.dest), (step.parent_mode, step.parent_uid, step.parent_gid), created)
    temp = f".{posixpath.basename(step.dest)}.{secrets.token_hex(6)}.restore"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            digest = hashlib.sha256()
            for chunk in reader.chunks():
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if digest.hexdigest() != step.member.sha256:
                raise _refuse(step.member.path, "changed between verification and extraction; nothing was replaced")
            os.fchmod(fd, step.mode)
            _chown(fd, step.uid, step.gid)
            os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)
    return temp


def _commit(step: Step, temp: str, kept: list[tuple[str, str]]) -> None:
    dfd = _open_dir(posixpath.dirname(step.dest), None, [])
    try:
        base = posixpath.basename(step.dest)
        if step.action == "replace":
            sides = ("-wal", "-shm") if step.member.role == "db" else ()
            bak = _free_bak(dfd, base, sides)
            for side in ("",) + sides:
                if _lexists(dfd, base + side):
                    os.rename(base + side, bak + side, src_dir_fd=dfd, dst_dir_fd=dfd)
            kept.append((step.dest, posixpath.join(posixpath.dirname(step.dest), bak)))
        elif step.member.role == "db":
            for side in ("-wal", "-shm"):  # a new database must not inherit a stranger's log
                if _lexists(dfd, base + side):
                    bak = _free_bak(dfd, base + side, ())
                    os.rename(base + side, bak, src_dir_fd=dfd, dst_dir_fd=dfd)
                    kept.append((step.dest + side, posixpath.join(posixpath.dirname(step.dest), bak)))
        os.rename(temp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        _fsync_dir(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def _instance_lock(plan: RestorePlan, created: list[str]) -> Iterator[None]:
    """Hold the gateway's own instance lock on the database being replaced, so no gateway
    is running on it now and none can start until the restore is done."""
    db = plan.db_dest
    if db is None:
        yield
        return
    step = next(s for s in plan.writes if s.member.role == "db")
    os.close(_open_dir(posixpath.dirname(db), (step.parent_mode, step.parent_uid, step.parent_gid), created))
    lock = InstanceLock.for_state(db)
    fresh = not os.path.lexists(lock.path)
    try:
        lock.acquire()
    except BootRefused as err:
        pid = lock.holder()
        raise RestoreRefused(
            f"a running gateway{f' (pid {pid})' if pid else ''} holds this state database; restore never replaces "
            f"a database under a running gateway ({err.message})", where=db,
            fix="stop the gateway first (systemctl stop ductile, or end its ductile serve), then restore") from None
    try:
        if fresh and os.geteuid() == 0:
            os.chown(lock.path, *plan.gateway)
        yield
    finally:
        lock.release()


def apply(plan: RestorePlan, archive: str, limits: Limits = Limits()) -> Applied:
    """Pass two: stage every file, then commit them all. Call only with ``plan.ok``."""
    created: list[str] = []
    staged: list[tuple[Step, str]] = []
    kept: list[tuple[str, str]] = []
    committed: list[str] = []
    by_path = {s.member.path: s for s in plan.steps}
    try:
        with _instance_lock(plan, created):
            with _reader(archive, limits) as reader:
                _open_meta(reader, limits, archive)
                while (member := reader.next()) is not None:
                    step = by_path.get(member.name)
                    if step is None or member.kind != step.member.kind or member.size != step.member.size:
                        raise _refuse(member.name, "the archive changed between verification and extraction; "
                                                   "nothing was replaced")
                    if step.action == "mkdir":
                        _make_dir(step, created)
                    elif step.action in ("create", "replace"):
                        staged.append((step, _stage(reader, step, member.mtime, created)))
            for step, temp in staged:
                _commit(step, temp, kept)
                committed.append(step.dest)
            staged.clear()
    except BaseException as exc:
        for step, temp in staged:
            if step.dest not in committed:
                with contextlib.suppress(OSError):
                    os.unlink(posixpath.join(posixpath.dirname(step.dest), temp))
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if isinstance(exc, OSError):
            done = (f"{len(committed)} file(s) were already in place (kept copies: .bak)" if committed
                    else "nothing was replaced")
            raise RestoreRefused(f"cannot write: {exc.strerror or exc}; {done}", where=str(exc.filename or archive),
                                 fix="run the restore as root or as the gateway user, with room on the "
                                     "destination's filesystem") from None
        raise
    written = tuple(s.dest for s in plan.writes)
    return Applied(written, tuple(kept), tuple(created))
