"""The gateway's own secrets — API bearer tokens and webhook HMAC keys — by ``secret_ref``.

``SecretSource`` is the seam: ``resolve(name)`` returns the value or raises a
``DuctileError`` naming the ref (never a value). ``VaultSource`` reads the age vault once
at boot; tests may hand ``resolve_gateway_secrets`` any other source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ductile.config.model import Config
from ductile.errors import BootRefused, DuctileError
from ductile.state.db import StateDB


class SecretSource(Protocol):
    def resolve(self, name: str) -> str: ...


class VaultSource:
    """Secret refs resolved from the vault named by ``secrets:``, decrypted once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._doc: object | None = None

    def resolve(self, name: str) -> str:
        from ductile.vault.refs import resolve_secret_ref  # pyrage loads only when a ref is needed
        from ductile.vault.store import VaultStore

        if self._doc is None:
            self._doc = VaultStore.from_config(self.config.secrets).read()
        return resolve_secret_ref(self._doc, name)  # type: ignore[arg-type]


class AuditedSource:
    """Records each gateway read of a secret ref in the vault audit trail (names, never values)."""

    def __init__(self, inner: SecretSource, db: StateDB) -> None:
        self.inner = inner
        self.db = db

    def resolve(self, name: str) -> str:
        try:
            value = self.inner.resolve(name)
        except DuctileError as err:
            self.db.audit.record_audit("gateway_ref", None, "gateway", "refused", {"ref": name, "why": err.message})
            raise
        self.db.audit.record_audit("gateway_ref", None, "gateway", "ok", {"ref": name})
        return value


@dataclass(frozen=True)
class GatewaySecrets:
    tokens: tuple[tuple[str, str, tuple[str, ...]], ...] = ()   # (name, value, scopes)
    webhook_keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # path -> key

    def __repr__(self) -> str:
        return f"GatewaySecrets(tokens={[t[0] for t in self.tokens]!r}, webhooks={sorted(self.webhook_keys)!r})"

    def values(self) -> list[str]:
        """Every value, for the log redactor."""
        return [t[1] for t in self.tokens] + [k.decode("utf-8", "replace") for k in self.webhook_keys.values()]


def resolve_gateway_secrets(config: Config, source: SecretSource) -> GatewaySecrets:
    """Resolve every token and webhook key the listener needs; the first problem refuses boot."""
    tokens: list[tuple[str, str, tuple[str, ...]]] = []
    keys: dict[str, bytes] = {}
    if not config.api.enabled:
        return GatewaySecrets()
    for i, tok in enumerate(config.api.tokens):
        value = _resolve(source, tok.secret_ref, f"api.tokens[{i}].secret_ref")
        if any(value == other for _, other, _ in tokens):
            raise BootRefused(f"API token {tok.name} has the same value as another token", where=f"api.tokens[{i}]",
                              fix="give every token its own secret (ductile vault set NAME)")
        tokens.append((tok.name, value, tuple(tok.scopes)))
    for i, hook in enumerate(config.webhooks):
        keys[hook.path] = _resolve(source, hook.secret_ref, f"webhooks[{i}].secret_ref").encode("utf-8")
    return GatewaySecrets(tuple(tokens), keys)


def _resolve(source: SecretSource, ref: str, where: str) -> str:
    try:
        value = source.resolve(ref)
    except DuctileError as err:
        raise BootRefused(err.message, where=where, fix=err.fix) from None
    if not value:
        raise BootRefused(f"secret {ref} is empty", where=where, fix=f"store a value: ductile vault set {ref}")
    return value
