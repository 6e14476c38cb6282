"""The backup's OS edge for reading: walk the sources, take the facts the plan needs, and
reopen a planned member for writing. Nothing here decides what goes in; ``plan`` does.

Trees are walked through directory descriptors, each component opened ``O_NOFOLLOW``: an
account that swaps a directory of its state_dir for a symlink to the age key's directory
between the walk and the write finds the open refused, not followed. Files are opened
``O_NONBLOCK`` so a FIFO swapped in cannot hang the backup, and the descriptor's
(device, inode) must be the one the walk saw. Every file is read once here (sha256 and a
scan for key material) and once more when it is written, when both are checked again.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ductile.errors import DuctileError
from ductile.system.plan import MAX_DEPTH, MAX_ENTRIES, Entry, Member, Paths, Source, junk_reason, sources_for
from ductile.system.secretzero import KeyFile, MaterialScanner, SecretZero, pairing_code, secret_place

if TYPE_CHECKING:
    from ductile.config import LoadedConfig

CHUNK = 1 << 20
MAX_KEY_BYTES = 1024 * 1024
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BackupError(DuctileError):
    """The backup cannot be made, or was stopped; no archive is left behind."""

    kind = "backup"


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir hands undecodable bytes over as surrogates
        return False
    return "\n" not in name and "\r" not in name


def read_facts(fd: int) -> tuple[str, bool, int]:
    """(sha256, holds key material, bytes read) of what is left to read on ``fd``."""
    digest, scan, size = hashlib.sha256(), MaterialScanner(), 0
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        scan.feed(chunk)
        size += len(chunk)
    return digest.hexdigest(), scan.found, size


# -- secret zero --------------------------------------------------------------------------

def _key_file(path: str, label: str) -> tuple[KeyFile, bytes | None]:
    identities: set[tuple[int, int]] = set()
    for follow in (False, True):
        try:
            st = os.stat(path, follow_symlinks=follow)
            identities.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    data: bytes | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                data = os.read(fd, MAX_KEY_BYTES)
        finally:
            os.close(fd)
    except OSError:
        data = None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    return KeyFile(path, label, frozenset(identities), digest), data


def _public_key(data: bytes | None, path: str) -> str | None:
    if data is None:
        return None
    from pyrage import x25519  # type: ignore[import-untyped]

    from ductile.vault.keyfile import parse_identity_text

    try:
        return str(x25519.Identity.from_str(parse_identity_text(data.decode("utf-8"), path)).to_public())
    except Exception:  # noqa: BLE001 - any unreadable key just means "no pairing code"; never echo key text
        return None


def secret_zero(age_key_file: str) -> SecretZero:
    """The key, its rotation leftovers that exist, and the current key's pairing code."""
    key, data = _key_file(age_key_file, "secrets.age_key_file")
    keys = [key]
    for suffix, label in ((".old", "the old key `ductile vault rotate-key` leaves (.old)"),
                          (".new", "the new key of an unfinished rotation (.new)")):
        if os.path.lexists(age_key_file + suffix):
            keys.append(_key_file(age_key_file + suffix, label)[0])
    public = _public_key(data, age_key_file)
    return SecretZero(tuple(keys), pairing_code(public) if public else None)


# -- walking ------------------------------------------------------------------------------

def _single(src: Source) -> list[Entry]:
    """A file the config names (followed if it is a symlink: the operator's choice)."""
    try:
        fd = os.open(src.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return [Entry("", "missing")]
    except OSError as err:
        return [Entry("", "unreadable", error=err.strerror or str(err))]
    try:
        st = os.fstat(fd)
        kind = kind_of(st.st_mode)
        ident = (st.st_dev, st.st_ino)
        if kind != "file":
            return [Entry("", kind, identity=ident)]
        if src.role == "db":  # the snapshot is what gets hashed
            return [Entry("", "file", st.st_size, st.st_mode, ident, st.st_mtime)]
        try:
            digest, material, size = read_facts(fd)
        except OSError as err:
            return [Entry("", "unreadable", error=err.strerror or str(err))]
        return [Entry("", "file", size, st.st_mode, ident, st.st_mtime, digest, material)]
    finally:
        os.close(fd)


def _stat_entry(rel: str, kind: str, st: os.stat_result) -> Entry:
    return Entry(rel, kind, st.st_size, st.st_mode, (st.st_dev, st.st_ino), st.st_mtime)


def _walk_dir(dfd: int, rel: str, depth: int, out: list[Entry], where: str) -> None:
    with os.scandir(dfd) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        name = child.name
        r = f"{rel}/{name}" if rel else name
        if len(out) > MAX_ENTRIES:
            raise BackupError(f"more than {MAX_ENTRIES} entries", where=where,
                              fix="move bulky data out of this tree, or archive a smaller scope")
        if not _utf8(name):
            out.append(Entry(r, "badname"))
            continue
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as err:
            out.append(Entry(r, "unreadable", error=err.strerror or str(err)))
            continue
        kind, ident = kind_of(st.st_mode), (st.st_dev, st.st_ino)
        if kind == "dir":
            if junk_reason(name, True) or secret_place(r):
                out.append(_stat_entry(r, "pruned" if junk_reason(name, True) else "dir", st))  # not descended
                continue
            if depth >= MAX_DEPTH:
                out.append(Entry(r, "unreadable", error=f"nested deeper than {MAX_DEPTH} directories"))
                continue
            try:
                sub = os.open(name, _OPEN_DIR, dir_fd=dfd)
            except OSError as err:
                out.append(Entry(r, "unreadable", error=err.strerror or str(err)))
                continue
            try:
                out.append(_stat_entry(r, "dir", st))
                _walk_dir(sub, r, depth + 1, out, where)
            finally:
                os.close(sub)
        elif kind == "file":
            if junk_reason(name, False):
                out.append(_stat_entry(r, "file", st))  # excluded by the plan; not worth reading
                continue
            try:
                fd = os.open(name, _OPEN_FILE, dir_fd=dfd)
            except OSError as err:
                out.append(Entry(r, "unreadable", error=err.strerror or str(err)))
                continue
            try:
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) != ident or not stat.S_ISREG(fst.st_mode):
                    out.append(Entry(r, "unreadable", error="replaced while it was being read"))
                    continue
                digest, material, size = read_facts(fd)
            except OSError as err:
                out.append(Entry(r, "unreadable", error=err.strerror or str(err)))
                continue
            finally:
                os.close(fd)
            out.append(Entry(r, "file", size, st.st_mode, ident, st.st_mtime, digest, material))
        else:
            out.append(Entry(r, kind, identity=ident))


def _tree(src: Source) -> list[Entry]:
    flags = _OPEN_DIR if src.role == "account" else _OPEN_DIR & ~os.O_NOFOLLOW
    try:
        dfd = os.open(src.path, flags)
    except FileNotFoundError:
        return [Entry("", "missing")]
    except OSError as err:
        if err.errno == getattr(os, "ELOOP", 40):
            return [Entry("", "symlink")]
        return [Entry("", "unreadable", error=err.strerror or str(err))]
    try:
        st = os.fstat(dfd)
        out = [Entry("", "dir", st.st_size, st.st_mode, (st.st_dev, st.st_ino), st.st_mtime)]
        if secret_place(src.path):
            return out
        try:
            _walk_dir(dfd, "", 1, out, src.path)
        except OSError as err:
            return [Entry("", "unreadable", error=err.strerror or str(err))]
        except BackupError as err:
            if src.role != "account":
                raise
            return [Entry("", "unreadable", error=err.message)]  # too many entries: the plan leaves it out
        return out
    finally:
        os.close(dfd)


def walk(src: Source) -> list[Entry]:
    return _tree(src) if src.tree else _single(src)


def gather(scope: str, paths: Paths) -> dict[str, list[Entry]]:
    """Facts for every source of ``scope``, keyed by the source's archive root."""
    return {src.arcroot: walk(src) for src in sources_for(scope, paths)}


# -- reopening a planned member -----------------------------------------------------------

def _source_of(member: Member, sources: tuple[Source, ...]) -> tuple[Source, str]:
    for src in sources:
        if member.arcname == src.arcroot:
            return src, ""
        if src.tree and member.arcname.startswith(src.arcroot + "/"):
            return src, member.arcname[len(src.arcroot) + 1:]
    raise BackupError("member has no source", where=member.arcname, fix="report this")


@contextmanager
def open_member(member: Member, sources: tuple[Source, ...]) -> Iterator[int]:
    """A descriptor on the planned file, reached the same way the walk reached it, and
    refused if it is no longer the same file (device and inode)."""
    src, rel = _source_of(member, sources)
    opened: list[int] = []
    try:
        if not rel:
            fd = os.open(src.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            opened.append(fd)
        else:
            flags = _OPEN_DIR if src.role == "account" else _OPEN_DIR & ~os.O_NOFOLLOW
            opened.append(os.open(src.path, flags))
            parts = rel.split("/")
            for part in parts[:-1]:
                opened.append(os.open(part, _OPEN_DIR, dir_fd=opened[-1]))
            fd = os.open(parts[-1], _OPEN_FILE, dir_fd=opened[-1])
            opened.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (member.identity is not None and (st.st_dev, st.st_ino) != member.identity):
            raise BackupError("was replaced by another file during the backup", where=member.source,
                              fix="retry the backup when nothing is changing it; no archive was left behind")
        yield fd
    except OSError as err:
        raise BackupError(f"cannot read it: {err.strerror or err}", where=member.source,
                          fix="run the backup as the gateway user (or root), or fix its owner and mode; "
                              "no archive was left behind") from None
    finally:
        for fd in reversed(opened):
            os.close(fd)


def paths_of(loaded: LoadedConfig) -> Paths:
    """``Paths`` of a loaded config."""
    from ductile.lock import lock_path

    cfg = loaded.config
    norm = posixpath.normpath
    return Paths(
        config_file=norm(loaded.path), config_dir=norm(loaded.directory),
        config_files=tuple(norm(f) for f in loaded.files), lock_file=norm(lock_path(loaded)),
        state_path=norm(cfg.state.path), vault_file=norm(cfg.secrets.vault_file),
        age_key_file=norm(cfg.secrets.age_key_file),
        plugin_roots=tuple(norm(r) for r in cfg.plugin_roots),
        accounts=tuple((n, a.uid, a.gid, norm(a.state_dir)) for n, a in sorted(cfg.accounts.items())),
    )
