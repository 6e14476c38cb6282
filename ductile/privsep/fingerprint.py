"""Plugin attestation as pure functions (SPEC §5.4, §6).

A fingerprint covers **everything the plugin executes**: a keyed BLAKE2b-256 of every file
of its tree (helpers and vendored modules as much as the entrypoint; symlinks by their
target text; bytecode caches aside — they are held to the trust rules instead) and of
every program of its ``#!`` chain (the interpreter's path and bytes). The key is the
vault's 32-byte nonce: without the vault nobody can forge a matching lock entry for
modified bytes. At spawn, a confined plugin whose fingerprint differs from its lock
entry — or that has no entry once a lock exists — is downgraded to the ``untrusted``
tier: blast-radius reduction, not an execution gate. With no ``untrusted`` tier the job
fails terminally (``NoDowngradeTarget``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ductile.config.model import Config
from ductile.errors import NoDowngradeTarget
from ductile.privsep.accounts import UNTRUSTED_TIER, ResolvedAccount, account

LockState = Literal["locked", "drifted", "unlocked", "no-lock"]
KEY_BYTES = 32
LINK_PREFIX = "link:"
BYTECODE_DIRS = frozenset({"__pycache__"})
BYTECODE_SUFFIXES = (".pyc", ".pyo")


def keyed_hash(nonce: bytes, data: bytes) -> str:
    """BLAKE2b-256 of ``data`` keyed by the 32-byte vault nonce, as hex."""
    if len(nonce) != KEY_BYTES:
        raise ValueError("the fingerprint key must be exactly 32 bytes")
    return hashlib.blake2b(data, key=nonce, digest_size=32).hexdigest()


def link_digest(nonce: bytes, target: str) -> str:
    """A symlink is what it points at, as text: retargeting it is a change."""
    return LINK_PREFIX + keyed_hash(nonce, b"symlink\0" + target.encode("utf-8", "surrogateescape"))


def is_bytecode(rel: str) -> bool:
    """Caches the interpreter rewrites on its own: not locked, but trust-checked."""
    parts = rel.split("/")
    return any(p in BYTECODE_DIRS for p in parts[:-1]) or parts[-1] in BYTECODE_DIRS or rel.endswith(BYTECODE_SUFFIXES)


Digests = tuple[tuple[str, str], ...]   # (path, digest) pairs


@dataclass(frozen=True)
class Fingerprint:
    """What one plugin looks like now (or looked like when locked)."""

    name: str
    directory: str
    entrypoint: str
    files: Digests          # (path relative to directory, digest), sorted by path
    interpreter: Digests    # (resolved path, digest), in the order the kernel runs them

    def matches(self, other: Fingerprint) -> bool:
        """Same bytes. A plugin copied to a new directory with the same bytes still matches."""
        return (self.files, self.interpreter) == (other.files, other.interpreter)


def fingerprint(name: str, directory: str, entrypoint: str, files: Iterable[tuple[str, str]],
                interpreter: Iterable[tuple[str, str]]) -> Fingerprint:
    return Fingerprint(name, directory, entrypoint, tuple(sorted(files)), tuple(interpreter))


def file_changes(current: Fingerprint, locked: Fingerprint) -> list[tuple[str, str]]:
    """Per-file ``(sign, what)``: ``+`` new, ``~`` changed, ``-`` removed (for ``--verbose``)."""
    out: list[tuple[str, str]] = []
    now, then = dict(current.files), dict(locked.files)
    for path in sorted(set(now) | set(then)):
        if path not in then:
            out.append(("+", path))
        elif path not in now:
            out.append(("-", path))
        elif now[path] != then[path]:
            out.append(("~", path))
    if current.interpreter != locked.interpreter:
        was = dict(locked.interpreter)
        for path, digest in current.interpreter:
            if was.get(path) != digest:
                out.append(("~" if path in was else "+", f"interpreter {path}"))
        for path in was:
            if path not in dict(current.interpreter):
                out.append(("-", f"interpreter {path}"))
    return out


def lock_state(current: Fingerprint | None, locked: Fingerprint | None, lock_exists: bool) -> LockState:
    """``no-lock``: locking not in use; ``unlocked``: a lock exists but not for this plugin."""
    if not lock_exists:
        return "no-lock"
    if locked is None:
        return "unlocked"
    if current is None or not current.matches(locked):
        return "drifted"
    return "locked"


@dataclass(frozen=True)
class Binding:
    """The account a spawn will use after attestation, and why."""

    account: ResolvedAccount
    state: LockState
    downgraded_from: str | None = None
    reason: str = ""

    @property
    def attested(self) -> bool:
        """True when the bytes are vouched for (or locking is not in use)."""
        return self.state in ("locked", "no-lock")


def bind_fingerprint(resolved: ResolvedAccount, state: LockState, config: Config, plugin: str,
                     reason: str = "") -> Binding:
    """Downgrade a confined plugin whose lock state is not vouched for."""
    if not resolved.confined or state in ("locked", "no-lock"):
        return Binding(resolved, state, reason=reason)
    why = reason or ("its bytes differ from the lock" if state == "drifted" else "it has no entry in the lock file")
    if UNTRUSTED_TIER not in config.accounts:
        raise NoDowngradeTarget(
            f"plugin {plugin} failed attestation ({why}) and no `untrusted` account exists to downgrade it to",
            where=f"plugins.{plugin}",
            fix=f"review the change and run `ductile plugin lock {plugin}`, or add an accounts.untrusted tier",
        )
    if resolved.name == UNTRUSTED_TIER:
        return Binding(resolved, state, reason=why)
    return Binding(account(config, UNTRUSTED_TIER, "downgraded"), state, downgraded_from=resolved.name, reason=why)


_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L, U


def confirmation_code(entries: Iterable[Fingerprint]) -> str:
    """Five characters over the sorted entries: `plugin lock --all CODE` commits only if the
    set being locked is still exactly what the operator previewed."""
    h = hashlib.blake2b(digest_size=16)
    for e in sorted(entries, key=lambda f: f.name):
        for part in (e.name, e.directory, e.entrypoint):
            h.update(part.encode() + b"\0")
        for group in (e.files, e.interpreter):
            for path, digest in group:
                h.update(path.encode("utf-8", "surrogateescape") + b"\0" + digest.encode() + b"\0")
            h.update(b"\2")
        h.update(b"\1")
    n = int.from_bytes(h.digest(), "big")
    out = ""
    for _ in range(5):
        n, r = divmod(n, len(_CODE_ALPHABET))
        out += _CODE_ALPHABET[r]
    return out


@dataclass(frozen=True)
class LockDiff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]


def diff_lock(current: Mapping[str, Fingerprint], locked: Mapping[str, Fingerprint]) -> LockDiff:
    added = tuple(sorted(n for n in current if n not in locked))
    removed = tuple(sorted(n for n in locked if n not in current))
    changed = tuple(sorted(n for n in current if n in locked and (not current[n].matches(locked[n])
                                                                  or current[n].directory != locked[n].directory
                                                                  or current[n].entrypoint != locked[n].entrypoint)))
    unchanged = tuple(sorted(n for n in current if n in locked and n not in changed))
    return LockDiff(added, changed, removed, unchanged)

