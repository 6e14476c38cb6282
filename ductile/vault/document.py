"""The vault document: what the age file decrypts to, as frozen data.

One JSON object, written by ``serialize`` and read back by ``parse``; a document made by hand
and encrypted with ``age -r`` reads the same way. ``parse`` is strict (unknown keys, wrong types
and bad names are errors naming the field) because a silently misread grant is a leaked secret.
Values are held only in ``SecretRecord.value``, whose repr is redacted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from ductile.config.model import KEBAB, SECRET_REF
from ductile.errors import VaultError

VERSION = 1
NONCE_BYTES = 32
PrincipalStatus = Literal["active", "revoked"]

_KEBAB = re.compile(KEBAB)
_SECRET_NAME = re.compile(SECRET_REF)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def utc_now() -> str:
    """The timestamp form the document uses: UTC, whole seconds, ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_principal_name(name: str) -> bool:
    return bool(_KEBAB.match(name))


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.match(name))


@dataclass(frozen=True)
class PrincipalRecord:
    status: PrincipalStatus
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class SecretRecord:
    """One secret. ``value`` never appears in repr/str: this object ends up in tracebacks."""

    value: str
    principals: tuple[str, ...]
    created_at: str
    rolled_at: str | None = None
    roll_count: int = 0

    def __post_init__(self) -> None:
        # one canonical order, so a document equals what it reads back as
        object.__setattr__(self, "principals", tuple(sorted(set(self.principals))))

    def __repr__(self) -> str:
        return (f"SecretRecord(value=<redacted>, principals={self.principals!r}, created_at={self.created_at!r}, "
                f"rolled_at={self.rolled_at!r}, roll_count={self.roll_count!r})")

    __str__ = __repr__


@dataclass(frozen=True)
class VaultDocument:
    """The whole vault. Treat the mappings as read-only: ``ops`` returns new documents."""

    nonce_hex: str
    principals: Mapping[str, PrincipalRecord] = field(default_factory=dict)
    secrets: Mapping[str, SecretRecord] = field(default_factory=dict)
    version: int = VERSION

    def __repr__(self) -> str:
        return (f"VaultDocument(version={self.version}, nonce=<redacted>, "
                f"principals={sorted(self.principals)!r}, secrets={sorted(self.secrets)!r})")

    __str__ = __repr__


def new_document(nonce_bytes: bytes) -> VaultDocument:
    """A fresh vault holding only the fingerprint nonce."""
    if len(nonce_bytes) != NONCE_BYTES:
        raise ValueError(f"the vault nonce must be {NONCE_BYTES} bytes")
    return VaultDocument(nonce_hex=nonce_bytes.hex())


def nonce(doc: VaultDocument) -> bytes:
    """The 32-byte key for plugin fingerprints (BLAKE2b keyed hashes, SPEC §6)."""
    return bytes.fromhex(doc.nonce_hex)


def serialize(doc: VaultDocument) -> bytes:
    """The plaintext that gets encrypted: stable key order so diffs of decrypted copies are readable."""
    obj: dict[str, Any] = {
        "version": doc.version,
        "nonce": doc.nonce_hex,
        "principals": {
            name: {k: v for k, v in (("status", p.status), ("created_at", p.created_at),
                                     ("revoked_at", p.revoked_at)) if v is not None}
            for name, p in sorted(doc.principals.items())
        },
        "secrets": {
            name: {"value": s.value, "principals": list(s.principals), "created_at": s.created_at,
                   "rolled_at": s.rolled_at, "roll_count": s.roll_count}
            for name, s in sorted(doc.secrets.items())
        },
    }
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class _Reader:
    """Strict field access with errors that name the field, never its value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, rule: str) -> VaultError:
        return VaultError(f"vault document field {path} {rule}", where=self.source,
                          fix="restore the previous version (<vault>.bak) or re-create the entry with `ductile vault`")

    def mapping(self, obj: Any, path: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(path, "must be an object")
        for key in sorted(obj):
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else key, "is not a known field")
        for key in sorted(required):
            if key not in obj:
                raise self.fail(f"{path}.{key}" if path else key, "is missing")
        return obj

    def text(self, obj: Any, path: str, *, optional: bool = False, stamp: bool = False) -> str | None:
        if obj is None and optional:
            return None
        if not isinstance(obj, str):
            raise self.fail(path, "must be a string")
        if stamp and not _TIMESTAMP.match(obj):
            raise self.fail(path, "must be a UTC timestamp like 2026-01-31T12:00:00Z")
        return obj


def parse(plaintext: bytes, source: str = "vault") -> VaultDocument:
    """Read a decrypted vault. ``source`` (the vault path) is where every error points."""
    r = _Reader(source)
    try:
        raw = json.loads(plaintext.decode("utf-8"))
    except UnicodeDecodeError:
        raise VaultError("decrypts but is not UTF-8 text", where=source,
                         fix="restore the previous version (<vault>.bak)") from None
    except json.JSONDecodeError as exc:  # message carries a position only, never content
        raise VaultError(f"decrypts but is not JSON (line {exc.lineno} column {exc.colno})", where=source,
                         fix="restore the previous version (<vault>.bak)") from None
    top = r.mapping(raw, "", {"version", "nonce", "principals", "secrets"}, {"version", "nonce"})
    version = top["version"]
    if type(version) is not int:
        raise r.fail("version", "must be an integer")
    if version != VERSION:
        raise VaultError(f"vault document version {version} is not supported (this ductile reads {VERSION})",
                         where=source, fix="use the ductile release that wrote it, or upgrade ductile")
    nonce_hex = top["nonce"]
    if not isinstance(nonce_hex, str) or not re.fullmatch(r"[0-9a-f]{%d}" % (2 * NONCE_BYTES), nonce_hex):
        raise r.fail("nonce", f"must be {NONCE_BYTES} bytes as {2 * NONCE_BYTES} lowercase hex digits")

    principals: dict[str, PrincipalRecord] = {}
    for name, body in _items(r, top.get("principals", {}), "principals"):
        path = f"principals.{name}"
        if not is_principal_name(name):
            raise r.fail(path, "is not a kebab-case principal name")
        body = r.mapping(body, path, {"status", "created_at", "revoked_at"}, {"status", "created_at"})
        status = body["status"]
        if status not in ("active", "revoked"):
            raise r.fail(f"{path}.status", "must be active or revoked")
        principals[name] = PrincipalRecord(
            status=status,
            created_at=r.text(body["created_at"], f"{path}.created_at", stamp=True) or "",
            revoked_at=r.text(body.get("revoked_at"), f"{path}.revoked_at", optional=True, stamp=True),
        )

    secrets: dict[str, SecretRecord] = {}
    for name, body in _items(r, top.get("secrets", {}), "secrets"):
        path = f"secrets.{name}"
        if not is_secret_name(name):
            raise r.fail(path, "is not a valid secret name (letters, digits, _ . -)")
        body = r.mapping(body, path, {"value", "principals", "created_at", "rolled_at", "roll_count"},
                         {"value", "principals", "created_at"})
        value = body["value"]
        if not isinstance(value, str) or not value:
            raise r.fail(f"{path}.value", "must be a non-empty string")
        grants = body["principals"]
        if not isinstance(grants, list) or not all(isinstance(g, str) and is_principal_name(g) for g in grants):
            raise r.fail(f"{path}.principals", "must be a list of kebab-case principal names")
        roll_count = body.get("roll_count", 0)
        if type(roll_count) is not int or roll_count < 0:
            raise r.fail(f"{path}.roll_count", "must be a non-negative integer")
        secrets[name] = SecretRecord(
            value=value,
            principals=tuple(grants),
            created_at=r.text(body["created_at"], f"{path}.created_at", stamp=True) or "",
            rolled_at=r.text(body.get("rolled_at"), f"{path}.rolled_at", optional=True, stamp=True),
            roll_count=roll_count,
        )
    return VaultDocument(nonce_hex=nonce_hex, principals=principals, secrets=secrets, version=version)


def _items(r: _Reader, obj: Any, path: str) -> list[tuple[str, Any]]:
    if not isinstance(obj, dict):
        raise r.fail(path, "must be an object")
    return sorted(obj.items())
