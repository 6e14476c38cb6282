"""Who may do what over the API: bearer tokens and their scopes. Pure.

    scope          trigger read cmds   trigger write cmds   read its jobs
    *              every plugin        every plugin         every job
    <plugin>:ro    that plugin         -                    that plugin's
    <plugin>:rw    that plugin         that plugin          that plugin's

The gateway's own routes are resources of their own (their names are reserved, no plugin
may take them): ``system:rw`` may reload the gateway (POST /system/reload), ``metrics:ro``
may read GET /metrics; ``*`` may do both.

Token values are resolved from the vault once at boot; a presented token is compared with
every configured one by constant-time comparison of SHA-256 digests, so neither the
position of the first differing byte nor the length of a stored token leaks, and every
request costs the same whether or not it matches.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's name (safe to log) and its scopes."""

    name: str
    scopes: tuple[str, ...]

    @property
    def everything(self) -> bool:
        return "*" in self.scopes

    def can_read(self, plugin: str) -> bool:
        return self.everything or f"{plugin}:ro" in self.scopes or f"{plugin}:rw" in self.scopes

    def can_write(self, plugin: str) -> bool:
        return self.everything or f"{plugin}:rw" in self.scopes

    def can_run(self, plugin: str, command_type: str) -> bool:
        return self.can_write(plugin) if command_type == "write" else self.can_read(plugin)

    def may(self, resource: str, level: str = "ro") -> bool:
        """A gateway resource (``system``, ``metrics``): ``rw`` implies ``ro``."""
        return self.everything or f"{resource}:rw" in self.scopes or (level == "ro" and f"{resource}:ro" in self.scopes)

    def readable(self) -> frozenset[str] | None:
        """The plugins whose jobs this caller may read; None means all of them."""
        if self.everything:
            return None
        return frozenset(s.rsplit(":", 1)[0] for s in self.scopes if ":" in s)


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode("utf-8") if isinstance(value, str) else value).digest()


class TokenTable:
    """The configured tokens, keyed by digest; values are not kept after construction."""

    def __init__(self, tokens: Iterable[tuple[str, str, tuple[str, ...]]]) -> None:
        self._entries = [(_digest(value), Principal(name, tuple(scopes))) for name, value, scopes in tokens]

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        probe = _digest(presented)
        found: Principal | None = None
        for digest, principal in self._entries:  # no early exit: every request costs the same
            if hmac.compare_digest(digest, probe) and found is None:
                found = principal
        return found


def bearer(header: str | None) -> str | None:
    """The token from ``Authorization: Bearer <token>`` (scheme case-insensitive), or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
