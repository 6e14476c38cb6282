"""Builders shared by the vault tests: a config directory, a store, a canary value."""

from __future__ import annotations

import hashlib
import os
import secrets
import textwrap
from pathlib import Path

from ductile.vault.store import VaultStore


def write_config(root: Path, body: str = "") -> Path:
    """A config directory whose key and vault live under ``root`` (secret/ and state/)."""
    (root / "plugins").mkdir(exist_ok=True)
    body = textwrap.dedent(body)
    api = "" if "\napi:" in "\n" + body else "api: {enabled: false}\n"  # quiet 'no tokens' warning
    (root / "config.yaml").write_text(
        "secrets: {age_key_file: secret/age.key, vault_file: state/vault.age}\n"
        "state: {path: state/ductile.db}\nplugin_roots: [plugins]\n" + api + body)
    return root


def store_at(root: Path) -> VaultStore:
    return VaultStore(key_file=str(root / "secret" / "age.key"), vault_file=str(root / "state" / "vault.age"))


def canary() -> str:
    """A value no output would contain by accident."""
    return "canary-" + secrets.token_hex(12)


def snapshot(*dirs: Path, skip_prefix: str | None = None) -> dict[str, str]:
    """sha256 of every file under ``dirs`` (lock files included): proves 'byte-identical'.
    ``skip_prefix`` leaves out files that are meant to change (the state DB's audit rows)."""
    out: dict[str, str] = {}
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            for name in files:
                if skip_prefix and name.startswith(skip_prefix):
                    continue
                p = os.path.join(dirpath, name)
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out
