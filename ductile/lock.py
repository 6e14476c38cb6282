"""The plugin lock file, ``<config dir>/.checksums`` (SPEC §6): read, compute, write.

Written only by ``ductile plugin lock``; read at every confined spawn. Writes are atomic
(temp file 0600 in the same directory, fsync, rename, fsync the directory) and keep the
previous owner, so ``sudo ductile plugin lock`` does not leave a root-owned file the
gateway cannot read. Any problem reading it is a ``LockError``; the spawn path treats that
as "not attested" (fail closed). A lock file of the previous format (version 1: manifest
and entrypoint only) is refused with the exact command that replaces it: it never vouched
for the helpers, so migrating it would vouch for bytes nobody reviewed.

What is hashed: every file of the plugin tree, walked from a descriptor of the plugin
directory (``fwalk``, symlinks listed by their target text and never followed, each file
opened ``O_NOFOLLOW`` relative to its directory's descriptor), and every program of the
``#!`` chain discovery resolved. The directory's (device, inode) must still be the one
discovery judged. Between the hash and the exec only someone who can write the plugin's
tree could swap a file, and discovery refuses trees any account (or anyone else but root
and the gateway) can write.

Cost: the tree is hashed at every spawn, with no cache (``bench/spawn_and_attest.py``: a
4 KiB script costs ~0.01 ms, 1 MiB ~2.3 ms). A cache keyed by (dev, inode, size,
mtime_ns, ctime_ns) would be fooled by a same-size rewrite within one timestamp tick, so
plugin files get none. Interpreters do (a 6.5 MiB ``python3.11`` costs ~7 ms, more than a
spawn): they live outside the plugin, are root-owned and unwritable by anyone else (the
trust rules), and a rewrite by root within one tick of the last hash is a risk accepted
for a cost that would otherwise double every job.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import yaml

from ductile.config import LoadedConfig
from ductile.errors import DuctileError, LockError
from ductile.plugins.discovery import Discovery, Plugin
from ductile.privsep.fingerprint import (BYTECODE_DIRS, Fingerprint, LockDiff, LockState, confirmation_code,
                                         diff_lock, file_changes, fingerprint, is_bytecode, keyed_hash, link_digest,
                                         lock_state)

LOCK_NAME = ".checksums"
LOCK_VERSION = 2
MAX_LOCK_BYTES = 16 * 1024 * 1024
MAX_HASHED_BYTES = 256 * 1024 * 1024    # per plugin: tree and interpreters together
MAX_TREE_FILES = 20_000
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class LockOutdated(LockError):
    """A lock file of an earlier format: relock, never migrate (see the module doc)."""


def lock_path(loaded: LoadedConfig) -> str:
    return os.path.join(loaded.directory, LOCK_NAME)


def relock_command(loaded: LoadedConfig) -> str:
    return f"ductile plugin lock --all --config {loaded.path}"


def relock_fix(loaded: LoadedConfig) -> str:
    return f"review the plugins, run `{relock_command(loaded)}`, then commit with the code it prints"


class _Budget:
    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.bytes = 0
        self.files = 0

    def take(self, size: int, path: str) -> None:
        self.bytes += size
        self.files += 1
        if self.bytes > MAX_HASHED_BYTES or self.files > MAX_TREE_FILES:
            raise LockError(f"plugin {self.plugin} is too large to attest (over {MAX_TREE_FILES} files or "
                            f"{MAX_HASHED_BYTES // 2**20} MiB)", where=path,
                            fix="keep only what the plugin runs in its directory")


def _read_fd(fd: int, path: str, budget: _Budget) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise LockError(f"{path} is not a regular file", where=path, fix="keep only regular files in a plugin")
    budget.take(st.st_size, path)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def read_bytes(path: str) -> bytes:
    """The file's bytes through an O_NOFOLLOW descriptor (a symlink swapped in is refused)."""
    try:
        fd = os.open(path, FILE_FLAGS)
    except OSError as err:
        raise LockError(f"cannot read {path}: {err.strerror}", where=path, fix="check the plugin files") from None
    try:
        return _read_fd(fd, path, _Budget(path))
    finally:
        os.close(fd)


def tree_digests(nonce: bytes, plugin: Plugin) -> list[tuple[str, str]]:
    """(relative path, keyed digest) of every file of the plugin tree but bytecode caches."""
    try:
        top = os.open(plugin.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise LockError(f"cannot open the plugin directory: {err.strerror}", where=plugin.directory,
                        fix="reinstall the plugin") from None
    budget = _Budget(plugin.name)
    out: list[tuple[str, str]] = []
    try:
        st = os.fstat(top)
        if (st.st_dev, st.st_ino) != plugin.dir_id:
            raise LockError("the plugin directory was replaced after discovery", where=plugin.directory,
                            fix="restart the gateway to discover and judge it again")
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            dirnames[:] = [d for d in dirnames if d not in BYTECODE_DIRS]
            for name in sorted(dirnames + filenames):
                rel = os.path.normpath(os.path.join(dirpath, name))
                where = os.path.join(plugin.directory, rel)
                mode = os.lstat(name, dir_fd=dirfd).st_mode
                if stat.S_ISDIR(mode) or is_bytecode(rel):
                    continue
                if stat.S_ISLNK(mode):
                    budget.take(0, where)
                    out.append((rel, link_digest(nonce, os.readlink(name, dir_fd=dirfd))))
                    continue
                try:
                    fd = os.open(name, FILE_FLAGS, dir_fd=dirfd)
                except OSError as err:
                    raise LockError(f"cannot read {where}: {err.strerror}", where=where,
                                    fix="check the plugin files") from None
                try:
                    out.append((rel, keyed_hash(nonce, _read_fd(fd, where, budget))))
                finally:
                    os.close(fd)
    except OSError as err:
        raise LockError(f"cannot walk the plugin directory: {err.strerror}", where=plugin.directory,
                        fix="check the plugin files") from None
    finally:
        os.close(top)
    return sorted(out)


_Identity = tuple[str, str, int, int, int, int, int]
_interpreter_digests: dict[_Identity, str] = {}


def interpreter_digest(nonce: bytes, path: str) -> str:
    """The keyed digest of one program of the #! chain, cached by its identity (module doc)."""
    try:
        fd = os.open(path, FILE_FLAGS)
    except OSError as err:
        raise LockError(f"cannot read the interpreter {path}: {err.strerror}", where=path,
                        fix="reinstall it, or fix the plugin's #! line") from None
    try:
        st = os.fstat(fd)
        key = (keyed_hash(nonce, b"interpreter-cache"), path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
               st.st_ctime_ns)
        digest = _interpreter_digests.get(key)
        if digest is None:
            digest = keyed_hash(nonce, _read_fd(fd, path, _Budget(path)))
            _interpreter_digests[key] = digest
        return digest
    finally:
        os.close(fd)


def current(nonce: bytes, plugin: Plugin) -> Fingerprint:
    """Fingerprint of everything the plugin executes, as it is on disk now."""
    return fingerprint(plugin.name, plugin.directory, plugin.entrypoint, tree_digests(nonce, plugin),
                       [(path, interpreter_digest(nonce, path)) for path in plugin.interpreter])


_ENTRY_FIELDS = ("name", "directory", "entrypoint")


def _digests(value: Any, what: str, path: str, fix: str) -> list[tuple[str, str]]:
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
        return sorted(value.items())
    if isinstance(value, list) and all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                       and isinstance(e.get("hash"), str) for e in value):
        return [(e["path"], e["hash"]) for e in value]
    raise LockError(f"{what} is malformed", where=path, fix=fix)


def read_lock(path: str, relock: str = "ductile plugin lock --all") -> dict[str, Fingerprint] | None:
    """The recorded fingerprints, or None when no lock file exists (locking not in use).
    ``relock``: the fix to name when the file must be regenerated."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LockError(f"cannot read the lock file: {err.strerror}", where=path,
                        fix="make it readable by the gateway (owner of the config directory)") from None
    if len(raw) > MAX_LOCK_BYTES:
        raise LockError("lock file is too large", where=path, fix=relock)
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LockError(f"lock file is not valid YAML ({type(err).__name__})", where=path, fix=relock) from None
    if isinstance(doc, dict) and doc.get("version") == 1:
        raise LockOutdated("the lock file has format 1, which covers only each plugin's manifest and entrypoint; "
                           "format 2 also covers its helpers and its interpreter, so every plugin counts as "
                           "not attested until it is relocked", where=path, fix=relock)
    if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION or not isinstance(doc.get("plugins"), list):
        raise LockError(f"lock file is not a version {LOCK_VERSION} ductile lock", where=path, fix=relock)
    out: dict[str, Fingerprint] = {}
    for i, entry in enumerate(doc["plugins"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) and entry.get(f) for f in _ENTRY_FIELDS):
            raise LockError(f"entry {i} is malformed (needs {', '.join(_ENTRY_FIELDS)}, files, interpreter)",
                            where=path, fix=relock)
        if entry["name"] in out:
            raise LockError(f"plugin {entry['name']} appears twice", where=path, fix=relock)
        files = _digests(entry.get("files"), f"entry {i} (files)", path, relock)
        interp = _digests(entry.get("interpreter") or [], f"entry {i} (interpreter)", path, relock)
        out[entry["name"]] = fingerprint(entry["name"], entry["directory"], entry["entrypoint"], files, interp)
    return out


def outdated_names(path: str) -> list[str]:
    """The plugin names a format-1 lock file lists (for the preview that replaces it)."""
    try:
        with open(path, "rb") as fh:
            doc = yaml.safe_load(fh.read(MAX_LOCK_BYTES).decode("utf-8"))
        return sorted(str(e["name"]) for e in doc.get("plugins", []) if isinstance(e, dict) and "name" in e)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError, TypeError):
        return []


def render_lock(entries: dict[str, Fingerprint], now: datetime | None = None) -> str:
    doc: dict[str, Any] = {
        "version": LOCK_VERSION,
        "generated_at": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plugins": [{"name": e.name, "directory": e.directory, "entrypoint": e.entrypoint,
                     "files": dict(e.files), "interpreter": [{"path": p, "hash": h} for p, h in e.interpreter]}
                    for _, e in sorted(entries.items())],
    }
    header = "# ductile plugin lock: keyed BLAKE2b fingerprints. Written by `ductile plugin lock`; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False)


def write_lock(path: str, entries: dict[str, Fingerprint]) -> None:
    """Atomically replace the lock file, keeping its owner (or the directory's for a new one)."""
    directory = os.path.dirname(path)
    try:
        st = os.stat(path)
        owner = (st.st_uid, st.st_gid)
    except FileNotFoundError:
        dst = os.stat(directory)
        owner = (dst.st_uid, dst.st_gid)
    data = render_lock(entries).encode()
    fd, tmp = tempfile.mkstemp(prefix=".checksums.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if owner != (os.geteuid(), os.getegid()):
            os.chown(tmp, *owner)
        os.rename(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise LockError(f"cannot write the lock file: {err.strerror}", where=path,
                        fix="run as the config directory's owner (or root)") from None
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---- operations (shared by `plugin lock`, `plugin list`, doctor and the spawn path) ----

def vault_nonce(loaded: LoadedConfig) -> bytes:
    """The fingerprint key. No vault, no lock: keyed-or-nothing."""
    from ductile.vault.document import nonce
    from ductile.vault.store import VaultStore

    store = VaultStore.from_config(loaded.config.secrets)
    doc = store.read_if_present()
    if doc is None:
        raise LockError("there is no vault, so there is no fingerprint key (the vault's nonce)",
                        where=loaded.config.secrets.vault_file, fix="run `ductile vault init` first")
    return nonce(doc)


def lockable(loaded: LoadedConfig, discovery: Discovery) -> dict[str, Plugin]:
    """The plugins a lock covers: discovered and configured."""
    return {n: p for n, p in sorted(discovery.plugins.items()) if n in loaded.config.plugins}


@dataclass(frozen=True)
class LockPreview:
    lock_file: str
    entries: dict[str, Fingerprint]
    diff: LockDiff
    code: str
    previous: dict[str, Fingerprint]     # what the lock file holds now (empty for an old format)
    outdated: bool = False               # the lock file being replaced has an earlier format


def _previous(loaded: LoadedConfig) -> tuple[dict[str, Fingerprint], list[str]]:
    """The current lock's entries, or ({}, names) for a format-1 lock being replaced."""
    path = lock_path(loaded)
    try:
        return dict(read_lock(path, relock_fix(loaded)) or {}), []
    except LockOutdated:
        return {}, outdated_names(path)


def preview_all(loaded: LoadedConfig, discovery: Discovery, nonce: bytes) -> LockPreview:
    path = lock_path(loaded)
    entries = {n: current(nonce, p) for n, p in lockable(loaded, discovery).items()}
    previous, old_names = _previous(loaded)
    diff = diff_lock(entries, previous)
    if old_names:  # every entry of a format-1 lock counts as changed (or removed)
        diff = LockDiff(tuple(sorted(n for n in entries if n not in old_names)),
                        tuple(sorted(n for n in entries if n in old_names)),
                        tuple(sorted(n for n in old_names if n not in entries)), ())
    return LockPreview(path, entries, diff, confirmation_code(entries.values()), previous, bool(old_names))


def commit_all(loaded: LoadedConfig, discovery: Discovery, nonce: bytes, code: str) -> LockPreview:
    preview = preview_all(loaded, discovery, nonce)
    if code.strip().upper() != preview.code:
        raise LockError(f"confirmation code {code!r} does not match the plugins as they are now ({preview.code})",
                        where=preview.lock_file,
                        fix="run `ductile plugin lock --all` again, review the changes, then use the new code")
    write_lock(preview.lock_file, preview.entries)
    return preview


def lock_one(loaded: LoadedConfig, discovery: Discovery, nonce: bytes, name: str) -> tuple[Fingerprint, str]:
    """Record one plugin; returns its fingerprint and what happened (new/changed/unchanged)."""
    plugins = lockable(loaded, discovery)
    if name not in plugins:
        why = "not configured under plugins:" if name in discovery.plugins else "not discovered (or refused) in plugin_roots"
        raise LockError(f"plugin {name} is {why}", where=f"plugins.{name}",
                        fix="`ductile plugin list` shows what was found and why not")
    path = lock_path(loaded)
    entries = dict(read_lock(path, relock_fix(loaded)) or {})
    fp = current(nonce, plugins[name])
    before = entries.get(name)
    what = "new" if before is None else ("unchanged" if before == fp else "changed")
    entries[name] = fp
    write_lock(path, entries)
    return fp, what


def attest(loaded: LoadedConfig, plugin: Plugin, nonce_of: Callable[[], bytes]) -> tuple[LockState, str]:
    """The lock state of one plugin at spawn time. Any problem is fail-closed ("drifted")
    with the reason; no lock file at all means locking is not in use."""
    path = lock_path(loaded)
    try:
        entries = read_lock(path, relock_fix(loaded))
    except LockError as err:
        return "drifted", err.one_line()
    if entries is None:
        return "no-lock", ""
    try:
        now = current(nonce_of(), plugin)
    except (LockError, DuctileError) as err:
        return "drifted", err.one_line()
    locked = entries.get(plugin.name)
    state = lock_state(now, locked, True)
    if state == "drifted" and locked is not None:
        changes = ", ".join(f"{sign}{what}" for sign, what in file_changes(now, locked)[:5])
        return state, f"changed since it was locked: {changes}" if changes else ""
    return state, ""


def lock_states(loaded: LoadedConfig, discovery: Discovery) -> dict[str, str]:
    """For `plugin list` and doctor: locked | drifted | unlocked | no-lock | unknown (no key)
    | outdated (a lock file of an earlier format)."""
    try:
        entries = read_lock(lock_path(loaded), relock_fix(loaded))
    except LockOutdated:
        return {n: "outdated" for n in discovery.plugins}
    except LockError:
        return {n: "unknown" for n in discovery.plugins}
    if entries is None:
        return {n: "no-lock" for n in discovery.plugins}
    try:
        key = vault_nonce(loaded)
    except DuctileError:
        return {n: ("unlocked" if n not in entries else "unknown") for n in discovery.plugins}
    out: dict[str, str] = {}
    for n, p in discovery.plugins.items():
        try:
            out[n] = lock_state(current(key, p), entries.get(n), True)
        except LockError:
            out[n] = "drifted"
    return out
