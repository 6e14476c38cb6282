"""Vault operations as the commands and the executor call them: lock, transform, write, audit.

Each function is one audited operation: it records an ``attempt`` row *before* it touches the
vault (so a crash between the vault write and the outcome row still leaves the change on
record; and a state database that cannot take the row refuses the operation before it
happens), then ``ok`` or ``refused`` (with the reason, which names things but never holds a
value), and re-raises refusals unchanged, so the command prints one line. An interrupted key
rotation finished by the operation is recorded as its own ``recover`` row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ductile.config.model import PluginConfig
from ductile.errors import DuctileError, VaultError
from ductile.vault import ops
from ductile.vault.audit import (
    ACTOR_GATEWAY,
    ATTEMPT,
    DENIED,
    OK,
    OP_COMPOSE_DENIAL,
    OP_COMPOSE_REFUSED,
    OP_GRANT,
    OP_INIT,
    OP_PRINCIPAL_ADD,
    OP_PRINCIPAL_REVOKE,
    OP_RECOVER,
    OP_REVOKE,
    OP_ROTATE_KEY,
    OP_SET,
    REFUSED,
    AuditSink,
)
from ductile.vault.compose import Composition, compose, principal_for
from ductile.vault.document import VaultDocument, utc_now
from ductile.vault.store import InitOutcome, RotateOutcome, VaultReader, VaultStore

T = TypeVar("T")


@dataclass(frozen=True)
class SecretSummary:
    """What may be shown about a secret: everything but its value."""

    name: str
    principals: tuple[str, ...]
    created_at: str
    rolled_at: str | None
    roll_count: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "principals": list(self.principals), "created_at": self.created_at,
                "rolled_at": self.rolled_at, "roll_count": self.roll_count}


@dataclass(frozen=True)
class PrincipalSummary:
    name: str
    status: str
    created_at: str
    revoked_at: str | None
    secrets: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "secrets": list(self.secrets)}


@dataclass(frozen=True)
class SetOutcome:
    name: str
    created: bool
    principals: tuple[str, ...]
    roll_count: int


def _audited(sink: AuditSink, op: str, principal: str, actor: str, detail: str, action: Callable[[], T],
             ok_detail: Callable[[T], str] | None = None) -> T:
    sink.record(op, principal, actor, ATTEMPT, detail)
    try:
        result = action()
    except DuctileError as err:
        sink.record(op, principal, actor, REFUSED, f"{detail}: {err.message}" if detail else err.message)
        raise
    except OSError as err:
        sink.record(op, principal, actor, REFUSED, f"{detail}: {type(err).__name__}" if detail else type(err).__name__)
        raise
    sink.record(op, principal, actor, OK, ok_detail(result) if ok_detail else detail)
    return result


def init_vault(store: VaultStore, sink: AuditSink, actor: str) -> InitOutcome:
    return _audited(sink, OP_INIT, "", actor, f"vault={store.vault_file}", store.initialize,
                    lambda o: f"vault={o.vault_file} key={'created' if o.key_created else 'existing'}")


def set_secret(store: VaultStore, name: str, value: str, grants: Iterable[str],
               sink: AuditSink, actor: str) -> SetOutcome:
    """Create or roll ``name``; ``grants`` are added to any it already has."""
    grants = tuple(sorted(set(grants)))

    def mutate(doc: VaultDocument) -> tuple[VaultDocument, SetOutcome]:
        new, created = ops.set_secret(doc, name, value, grants, utc_now())
        record = new.secrets[name]
        return new, SetOutcome(name, created, record.principals, record.roll_count)

    return _audited(sink, OP_SET, ",".join(grants), actor, f"secret={name}",
                    lambda: store.update(mutate, recovered=_recovered(sink, actor)),
                    lambda o: f"secret={name} {'created' if o.created else f'rolled roll_count={o.roll_count}'}")


def grant_secret(store: VaultStore, name: str, principal: str, sink: AuditSink, actor: str) -> bool:
    """Returns whether anything changed (granting twice is not an error)."""
    return _audited(sink, OP_GRANT, principal, actor, f"secret={name}",
                    lambda: store.update(lambda d: ops.grant(d, name, principal), recovered=_recovered(sink, actor)),
                    lambda changed: f"secret={name}" + ("" if changed else " (already granted)"))


def revoke_secret(store: VaultStore, name: str, principal: str, sink: AuditSink, actor: str) -> bool:
    return _audited(sink, OP_REVOKE, principal, actor, f"secret={name}",
                    lambda: store.update(lambda d: ops.revoke(d, name, principal), recovered=_recovered(sink, actor)),
                    lambda changed: f"secret={name}" + ("" if changed else " (was not granted)"))


def add_principal(store: VaultStore, name: str, sink: AuditSink, actor: str) -> None:
    _audited(sink, OP_PRINCIPAL_ADD, name, actor, "",
             lambda: store.update(lambda d: (ops.add_principal(d, name, utc_now()), None),
                                  recovered=_recovered(sink, actor)))


def revoke_principal(store: VaultStore, name: str, sink: AuditSink, actor: str) -> None:
    _audited(sink, OP_PRINCIPAL_REVOKE, name, actor, "",
             lambda: store.update(lambda d: (ops.revoke_principal(d, name, utc_now()), None),
                                  recovered=_recovered(sink, actor)))


def rotate_key(store: VaultStore, sink: AuditSink, actor: str) -> RotateOutcome:
    return _audited(sink, OP_ROTATE_KEY, "", actor, f"key={store.key_file}",
                    lambda: store.rotate_key(recovered=_recovered(sink, actor)),
                    lambda o: f"key={o.key_file} old_key={o.old_key_file}")


def recover(store: VaultStore, sink: AuditSink, actor: str) -> list[str]:
    """``vault recover``: finish or roll back an interrupted key rotation and remove stale
    temp files, under the vault lock. Every writer does this first anyway; the command is
    the fix doctor names, and a way to do it without changing anything else."""
    return _audited(sink, OP_RECOVER, "", actor, f"vault={store.vault_file}", store.recover,
                    lambda done: "; ".join(done) or "nothing to recover")


def _recovered(sink: AuditSink, actor: str) -> Callable[[list[str]], None]:
    def record(done: list[str]) -> None:
        sink.record(OP_RECOVER, "", actor, OK, "; ".join(done))
    return record


def list_secrets(doc: VaultDocument) -> list[SecretSummary]:
    return [SecretSummary(name, s.principals, s.created_at, s.rolled_at, s.roll_count)
            for name, s in sorted(doc.secrets.items())]


def list_principals(doc: VaultDocument) -> list[PrincipalSummary]:
    return [PrincipalSummary(name, p.status, p.created_at, p.revoked_at,
                             tuple(s for s, rec in sorted(doc.secrets.items()) if name in rec.principals))
            for name, p in sorted(doc.principals.items())]


def compose_for_plugin(store: VaultReader, plugin_name: str, plugin_config: PluginConfig | None,
                       sink: AuditSink) -> Composition:
    """The secrets for one spawn of ``plugin_name``, from the vault as it is now, so a roll is
    seen by the next dispatch.

    A vault that exists but cannot be read fails every plugin closed, not only those with
    ``requires_vault``: without reading it we cannot tell whether the principal was revoked.
    """
    principal = principal_for(plugin_name, plugin_config)
    requires = plugin_config.requires_vault if plugin_config is not None else False
    try:
        doc = store.read_if_present()
    except VaultError as err:
        sink.record(OP_COMPOSE_REFUSED, principal, ACTOR_GATEWAY, REFUSED, f"plugin={plugin_name}: {err.message}")
        raise
    try:
        composition = compose(doc, principal, requires_vault=requires, vault_present=doc is not None)
    except DuctileError as err:
        sink.record(OP_COMPOSE_REFUSED, principal, ACTOR_GATEWAY, REFUSED, f"plugin={plugin_name}: {err.message}")
        raise
    for secret, reason in composition.denials:
        sink.record(OP_COMPOSE_DENIAL, principal, ACTOR_GATEWAY, DENIED,
                    f"plugin={plugin_name} secret={secret} reason={reason}")
    return composition
