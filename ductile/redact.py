"""The one redaction rule: which values are shown as ``<redacted>`` wherever ductile prints
data someone else wrote. Pure.

Secrets belong in the vault, and the config holds only ``secret_ref`` names; but operators
write free-form maps (``plugins.<n>.config``, schedule ``payload``) and clients send
payloads, and any of them may carry a token. ``config show`` redacts them; so must every
other reader of the same data: ``GET /job``, ``GET /jobs``, ``job show``, ``job list``.
One function, so the API can never show what ``config show`` hides.

A key is secret-looking when one of its words (split at ``_``, ``-``, ``.``, spaces and
camelCase) is a secret word, or two adjacent words name a key:

    secret  token  password/passwd/passw*  passphrase  credential  bearer  auth
    authorization  cookie  apikey                 api key  private key  access key  client secret

so ``api_key``, ``X-Auth-Token``, ``privateKey`` and ``db_password`` are redacted while
``author``, ``authority`` and ``keyword`` are not. ``*_ref`` keys name vault entries and are
shown; empty values are shown (there is nothing to hide).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
SECRET_WORDS = frozenset({
    "secret", "secrets", "token", "tokens", "passphrase", "credential", "credentials", "bearer",
    "auth", "authorization", "cookie", "cookies", "apikey", "apikeys", "privatekey",
})
SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key"), ("client", "secret"),
                          ("api", "keys"), ("secret", "key")})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def words(key: str) -> list[str]:
    """``X-Auth-Token`` -> [x, auth, token]; ``privateKey`` -> [private, key]."""
    return [w.lower() for w in _WORD.findall(key)]


def secret_looking(key: str) -> bool:
    if key.endswith("_ref"):
        return False
    ws = words(key)
    if any(w in SECRET_WORDS or w.startswith("passw") for w in ws):
        return True
    return any(pair in SECRET_PAIRS for pair in zip(ws, ws[1:]))


def redact(value: Any) -> Any:
    """``value`` with every non-empty value under a secret-looking key replaced, at any depth."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and secret_looking(k) and value[k] not in (None, "")
                    else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def secret_paths(value: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the secret-looking keys in ``value`` (for doctor: where, never what)."""
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(k, str) and secret_looking(k) and v not in (None, ""):
                out.append(path)
            else:
                out += secret_paths(v, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += secret_paths(v, f"{prefix}[{i}]")
    return out
