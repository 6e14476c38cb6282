"""Lifecycle transforms: document in, new document out, or a refusal that names the fix.

Pure, so every rule (names, existing principals, revoked principals, roll counting) is tested
without a key or a file; ``lifecycle`` runs them under the store's lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ductile.errors import VaultError
from ductile.vault.document import (
    PrincipalRecord,
    SecretRecord,
    VaultDocument,
    is_principal_name,
    is_secret_name,
)


def check_principal_name(name: str) -> None:
    if not is_principal_name(name):
        raise VaultError(f"name {name!r} is not kebab-case", where="principal",
                         fix="use lowercase letters, digits and single hyphens, e.g. my-plugin")


def check_secret_name(name: str) -> None:
    if not is_secret_name(name):
        raise VaultError(f"name {name!r} is not allowed", where="secret",
                         fix="start with a letter or digit and use only letters, digits, _ . -")


def _require_active(doc: VaultDocument, principal: str) -> None:
    """A grant must name a principal that exists and is active, so a typo cannot fail open."""
    check_principal_name(principal)
    record = doc.principals.get(principal)
    if record is None:
        raise VaultError("is not in the vault", where=f"principal {principal}",
                         fix=f"add it first: ductile vault principal add {principal}")
    if record.status != "active":
        raise VaultError("is revoked and cannot receive grants",
                         where=f"principal {principal}", fix="grant to an active principal (ductile vault principal list)")


def _require_secret(doc: VaultDocument, name: str) -> SecretRecord:
    check_secret_name(name)
    record = doc.secrets.get(name)
    if record is None:
        raise VaultError("is not in the vault", where=f"secret {name}",
                         fix=f"create it first: ductile vault set {name} < FILE")
    return record


def set_secret(doc: VaultDocument, name: str, value: str, grants: Iterable[str], now: str) -> tuple[VaultDocument, bool]:
    """Create ``name`` or roll its value; ``grants`` are added to existing ones. Returns (doc, created)."""
    check_secret_name(name)
    if not value:
        raise VaultError("refusing an empty secret value", where=f"secret {name}", fix="pipe a non-empty value on stdin")
    new_grants = sorted(set(grants))
    for principal in new_grants:
        _require_active(doc, principal)
    secrets = dict(doc.secrets)
    old = secrets.get(name)
    if old is None:
        secrets[name] = SecretRecord(value=value, principals=tuple(new_grants), created_at=now)
        created = True
    else:
        secrets[name] = replace(old, value=value, principals=tuple(sorted(set(old.principals) | set(new_grants))),
                                rolled_at=now, roll_count=old.roll_count + 1)
        created = False
    return replace(doc, secrets=secrets), created


def grant(doc: VaultDocument, name: str, principal: str) -> tuple[VaultDocument, bool]:
    """Let ``principal`` receive ``name``. Returns (doc, changed); granting twice is not an error."""
    record = _require_secret(doc, name)
    _require_active(doc, principal)
    if principal in record.principals:
        return doc, False
    secrets = dict(doc.secrets)
    secrets[name] = replace(record, principals=tuple(sorted((*record.principals, principal))))
    return replace(doc, secrets=secrets), True


def revoke(doc: VaultDocument, name: str, principal: str) -> tuple[VaultDocument, bool]:
    """Stop ``principal`` receiving ``name`` from its next spawn. Returns (doc, changed)."""
    record = _require_secret(doc, name)
    check_principal_name(principal)
    if principal not in record.principals:
        return doc, False
    secrets = dict(doc.secrets)
    secrets[name] = replace(record, principals=tuple(p for p in record.principals if p != principal))
    return replace(doc, secrets=secrets), True


def add_principal(doc: VaultDocument, name: str, now: str) -> VaultDocument:
    """Register ``name``. A revoked principal stays revoked: names are never reused silently."""
    check_principal_name(name)
    existing = doc.principals.get(name)
    if existing is not None:
        if existing.status == "revoked":
            raise VaultError("was revoked and cannot be re-added", where=f"principal {name}",
                             fix="register the plugin under a new principal name (plugins.<name>.vault_principal)")
        raise VaultError("is already in the vault", where=f"principal {name}",
                         fix="nothing to do; see ductile vault principal list")
    principals = dict(doc.principals)
    principals[name] = PrincipalRecord(status="active", created_at=now)
    return replace(doc, principals=principals)


def revoke_principal(doc: VaultDocument, name: str, now: str) -> VaultDocument:
    """Mark ``name`` revoked: every later compose for it fails closed, whatever its grants."""
    check_principal_name(name)
    existing = doc.principals.get(name)
    if existing is None:
        raise VaultError("is not in the vault", where=f"principal {name}",
                         fix="see ductile vault principal list")
    if existing.status == "revoked":
        raise VaultError("is already revoked", where=f"principal {name}", fix="nothing to do")
    principals = dict(doc.principals)
    principals[name] = replace(existing, status="revoked", revoked_at=now)
    return replace(doc, principals=principals)
