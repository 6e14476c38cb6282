"""The plugin lock file, ``<config dir>/.checksums`` (SPEC §6): read, compute, write.

Written only by ``ductile plugin lock``; read at every confined spawn. Writes are atomic
(temp file 0600 in the same directory, fsync, rename, fsync the directory) and keep the
previous owner, so ``sudo ductile plugin lock`` does not leave a root-owned file the
gateway cannot read. Any problem reading it is a ``LockError``; the spawn path treats that
as "not attested" (fail closed).

Check-then-exec: the bytes are hashed from a descriptor opened with O_NOFOLLOW, and the
path is exec'd afterwards; between the two, only someone who can write the plugin's
directory could swap the file, and discovery refuses plugin directories and entrypoints
that are group/world-writable or owned by an account uid. What remains uncovered: the
``#!`` interpreter and anything the plugin imports or reads at run time are not hashed.

Cost: the bytes are hashed at every spawn, with no cache. Measured with
``bench/spawn_and_attest.py``: 4 KiB costs ~0.01 ms (0.002 of a confined spawn), 1 MiB
~2.3 ms (0.6 of a spawn). A cache keyed by (dev, inode, size, mtime_ns, ctime_ns) would be
fooled by a same-size rewrite within one kernel timestamp tick (timestamps come from the
coarse clock, several ms), so it is not worth the risk at plugin sizes.
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
from ductile.privsep.fingerprint import (Fingerprint, LockDiff, LockState, confirmation_code, diff_lock, fingerprint,
                                         lock_state)

LOCK_NAME = ".checksums"
LOCK_VERSION = 1
MAX_LOCK_BYTES = 4 * 1024 * 1024
MAX_HASHED_BYTES = 256 * 1024 * 1024


def lock_path(loaded: LoadedConfig) -> str:
    return os.path.join(loaded.directory, LOCK_NAME)


def read_bytes(path: str) -> bytes:
    """The file's bytes through an O_NOFOLLOW descriptor (a symlink swapped in is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise LockError(f"cannot read {path}: {err.strerror}", where=path, fix="check the plugin files") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_HASHED_BYTES:
            raise LockError(f"{path} is not a regular file of at most {MAX_HASHED_BYTES} bytes", where=path,
                            fix="point the manifest at a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def current(nonce: bytes, plugin: Plugin) -> Fingerprint:
    """Fingerprint of the plugin's bytes as they are on disk now (paths as resolved)."""
    return fingerprint(nonce, plugin.name, plugin.manifest_path, read_bytes(plugin.manifest_path),
                       plugin.entrypoint, read_bytes(plugin.entrypoint))


def read_lock(path: str) -> dict[str, Fingerprint] | None:
    """The recorded fingerprints, or None when no lock file exists (locking not in use)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LockError(f"cannot read the lock file: {err.strerror}", where=path,
                        fix="make it readable by the gateway (owner of the config directory)") from None
    if len(raw) > MAX_LOCK_BYTES:
        raise LockError("lock file is too large", where=path, fix="regenerate it with `ductile plugin lock --all`")
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LockError(f"lock file is not valid YAML ({type(err).__name__})", where=path,
                        fix="regenerate it with `ductile plugin lock --all`") from None
    if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION or not isinstance(doc.get("plugins"), list):
        raise LockError(f"lock file is not a version {LOCK_VERSION} ductile lock", where=path,
                        fix="regenerate it with `ductile plugin lock --all`")
    out: dict[str, Fingerprint] = {}
    fields = ("name", "manifest_path", "manifest_hash", "entrypoint_path", "entrypoint_hash")
    for i, entry in enumerate(doc["plugins"]):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) and entry.get(f) for f in fields):
            raise LockError(f"entry {i} is malformed (needs {', '.join(fields)})", where=path,
                            fix="regenerate it with `ductile plugin lock --all`")
        if entry["name"] in out:
            raise LockError(f"plugin {entry['name']} appears twice", where=path, fix="regenerate the lock")
        out[entry["name"]] = Fingerprint(*(entry[f] for f in fields))
    return out


def render_lock(entries: dict[str, Fingerprint], now: datetime | None = None) -> str:
    doc: dict[str, Any] = {
        "version": LOCK_VERSION,
        "generated_at": (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plugins": [{"name": e.name, "manifest_path": e.manifest_path, "manifest_hash": e.manifest_hash,
                     "entrypoint_path": e.entrypoint_path, "entrypoint_hash": e.entrypoint_hash}
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


def preview_all(loaded: LoadedConfig, discovery: Discovery, nonce: bytes) -> LockPreview:
    path = lock_path(loaded)
    entries = {n: current(nonce, p) for n, p in lockable(loaded, discovery).items()}
    return LockPreview(path, entries, diff_lock(entries, read_lock(path) or {}), confirmation_code(entries.values()))


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
    entries = dict(read_lock(path) or {})
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
        entries = read_lock(path)
    except LockError as err:
        return "drifted", err.one_line()
    if entries is None:
        return "no-lock", ""
    try:
        now = current(nonce_of(), plugin)
    except (LockError, DuctileError) as err:
        return "drifted", err.one_line()
    state = lock_state(now, entries.get(plugin.name), True)
    return state, ""


def lock_states(loaded: LoadedConfig, discovery: Discovery) -> dict[str, str]:
    """For `plugin list` and doctor: locked | drifted | unlocked | no-lock | unknown (no key)."""
    try:
        entries = read_lock(lock_path(loaded))
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
