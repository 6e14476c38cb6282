"""Webhook signatures: HMAC-SHA256 over the raw body, compared in constant time. Pure.

Accepted header forms: GitHub's ``sha256=<hex>`` and bare ``<hex>`` (either case). The
MAC is computed over the bytes exactly as received — never over re-serialised JSON, which
would change whitespace and key order and so the MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def sign(key: bytes, body: bytes) -> str:
    """The bare-hex signature a sender computes (handy for tests and the docs' curl line)."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str | None) -> bool:
    if not header or not key:
        return False
    value = header.strip()
    if value[:7].lower() == "sha256=":
        value = value[7:]
    if not _HEX64.match(value):
        return False
    expected = hmac.new(key, body, hashlib.sha256).digest()
    return hmac.compare_digest(expected, bytes.fromhex(value))
