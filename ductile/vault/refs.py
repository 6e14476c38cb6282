"""Secrets used by the gateway itself: API bearer tokens and webhook HMAC keys.

They are resolved by name from the vault once (boot or reload) and compared in constant time,
so neither a missing ref nor a timing difference says anything about a value.
"""

from __future__ import annotations

import hmac

from ductile.errors import VaultError
from ductile.vault.document import VaultDocument


def resolve_secret_ref(doc: VaultDocument, name: str) -> str:
    """The value of secret ``name``; a missing one is a VaultError naming the ref only."""
    record = doc.secrets.get(name)
    if record is None:
        raise VaultError(f"secret_ref {name} is not in the vault", where=f"secret_ref {name}",
                         fix=f"store it: ductile vault set {name} < FILE")
    return record.value


def tokens_equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality for presented vs stored tokens (hmac.compare_digest on UTF-8 bytes)."""
    left = a.encode("utf-8") if isinstance(a, str) else a
    right = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(left, right)
