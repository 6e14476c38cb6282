"""doctor's vault section: can secret zero open the vault, and does the config match its contents?

Read-only: the key and vault are opened and decrypted in memory, nothing is written or locked.
"""

from __future__ import annotations

import os
import stat

from pyrage import x25519  # type: ignore[import-untyped]

from ductile.config import LoadedConfig
from ductile.config.model import Config
from ductile.errors import VaultError
from ductile.findings import Finding, Severity
from ductile.vault.compose import principal_for
from ductile.vault.document import VaultDocument, is_principal_name
from ductile.vault.keyfile import read_identity
from ductile.vault.store import VaultStore

CATEGORY = "vault"


def secret_refs(config: Config) -> list[tuple[str, str]]:
    """(config field, secret name) for every secret the gateway itself resolves."""
    refs = [(f"api.tokens[{i}].secret_ref", t.secret_ref) for i, t in enumerate(config.api.tokens)]
    refs += [(f"webhooks[{i}].secret_ref", w.secret_ref) for i, w in enumerate(config.webhooks)]
    return refs


def _principal_fix(plugin: str, principal: str) -> str:
    if not is_principal_name(principal):
        return (f"plugin name {plugin} is not kebab-case: set plugins.{plugin}.vault_principal to a kebab-case "
                "name, then ductile vault principal add it")
    return f"ductile vault principal add {principal}, then grant its secrets (ductile vault grant NAME {principal})"


def vault_findings(loaded: LoadedConfig) -> list[Finding]:
    cfg = loaded.config
    store = VaultStore.from_config(cfg.secrets)
    key_at, vault_at = loaded.where("secrets.age_key_file"), loaded.where("secrets.vault_file")
    required = [(name, pc) for name, pc in sorted(cfg.plugins.items()) if pc.requires_vault and pc.enabled]
    refs = secret_refs(cfg)
    key_exists, vault_exists = os.path.lexists(store.key_file), store.exists()
    out: list[Finding] = []

    def required_error(name: str, message: str, fix: str) -> Finding:
        return Finding("error", CATEGORY, f"plugins.{name}.requires_vault", message, fix,
                       loaded.where(f"plugins.{name}.requires_vault"))

    if not vault_exists:
        if key_exists:
            out += _key_findings(store, key_at)
        for name, _ in required:
            out.append(required_error(name, f"requires_vault is true but there is no vault at {store.vault_file}: "
                                      "every job of this plugin fails closed",
                                      "ductile vault init, then add its principal and grant its secrets"))
        if refs:
            names = ", ".join(f"{field}={ref}" for field, ref in refs)
            missing = "no vault key or vault" if not key_exists else "no vault"
            out.append(Finding("warning", CATEGORY, "secrets.vault_file",
                               f"secrets are referenced ({names}) but there is {missing} yet "
                               f"(key {store.key_file}, vault {store.vault_file})",
                               "ductile vault init, then ductile vault set NAME < FILE for each", vault_at))
        return out

    if not key_exists:
        return [Finding("error", CATEGORY, "secrets.age_key_file",
                        f"the vault {store.vault_file} exists but its age key {store.key_file} does not",
                        "restore the key from your offline copy, or fix secrets.age_key_file", key_at)]
    custody = custody_findings(store, key_at)
    key_problems = _key_findings(store, key_at)
    if key_problems:
        return custody + key_problems
    try:
        doc = store.read()
    except VaultError as err:
        return custody + [Finding("error", CATEGORY, "secrets.vault_file", err.message, err.fix, vault_at)]

    out += custody
    out += _file_findings(store, vault_at, key_at)
    out += _grant_findings(doc, store.vault_file)
    for name, pc in required:
        principal = principal_for(name, pc)
        record = doc.principals.get(principal)
        if record is None:
            out.append(required_error(name, f"requires_vault is true but principal {principal} is not in the vault: "
                                      "every job of this plugin fails closed", _principal_fix(name, principal)))
        elif record.status != "active":
            out.append(required_error(name, f"principal {principal} is revoked: every job of this plugin fails closed",
                                      f"set plugins.{name}.vault_principal to a new principal, or disable the plugin"))
    for name, pc in sorted(cfg.plugins.items()):
        if pc.vault_principal and not pc.requires_vault and pc.vault_principal not in doc.principals:
            out.append(Finding("warning", CATEGORY, f"plugins.{name}.vault_principal",
                               f"principal {pc.vault_principal} is not in the vault: the plugin runs with no secrets",
                               f"ductile vault principal add {pc.vault_principal}",
                               loaded.where(f"plugins.{name}.vault_principal")))
    for field, ref in refs:
        if ref not in doc.secrets:
            out.append(Finding("error", CATEGORY, field, f"secret {ref} is not in the vault {store.vault_file}",
                               f"ductile vault set {ref} < FILE", loaded.where(field)))
    return out


def _key_findings(store: VaultStore, key_at: str) -> list[Finding]:
    try:
        read_identity(store.key_file)
    except VaultError as err:
        return [Finding("error", CATEGORY, "secrets.age_key_file", err.message, err.fix, key_at or err.where)]
    return []


def _file_findings(store: VaultStore, vault_at: str, key_at: str) -> list[Finding]:
    out: list[Finding] = []
    mode = stat.S_IMODE(os.stat(store.vault_file).st_mode)
    if mode & 0o077:
        out.append(Finding("warning", CATEGORY, "secrets.vault_file",
                           f"the vault {store.vault_file} has mode {mode:04o}; it should be 0600",
                           f"chmod 0600 {store.vault_file}", vault_at))
    return out


RECOVER = "ductile vault recover"


def _identity(path: str) -> x25519.Identity | None:
    try:
        return read_identity(path)
    except VaultError:
        return None


def _opens(identity: x25519.Identity, path: str) -> bool:
    try:
        VaultStore("", path).read(identity)
    except VaultError:
        return False
    return True


def custody_findings(store: VaultStore, key_at: str) -> list[Finding]:
    """Secret zero's custody: hard links (where ``shred`` would destroy the key), leftovers
    of an interrupted rotation, and files a retired key still opens. Read-only; the fixes
    are ``unlink`` (never ``shred`` on a link), ``ductile vault recover``, or ``shred`` on a
    real copy of a retired key only."""
    out: list[Finding] = []
    key, old, new = store.key_file, store.old_key_file, store.new_key_file

    def add(severity: Severity, message: str, fix: str) -> None:
        out.append(Finding(severity, CATEGORY, "secrets.age_key_file", message, fix, key_at))

    try:
        links = os.stat(key).st_nlink
    except OSError:
        return out
    old_is_link = os.path.lexists(old) and _same(old, key)
    if old_is_link:
        add("error", f"{old} is a hard link to the current age key {key} (the same bytes, not a copy): shredding "
                     "it would destroy the only key", f"unlink {old} (never shred it)")
    elif links > 1:
        add("error", f"the age key {key} has {links} hard links: shredding any of its names destroys the key itself",
            f"find the other names (find / -xdev -samefile {key}) and unlink them; never shred a hard link")
    if os.path.lexists(new):
        add("warning", f"an interrupted key rotation left {new}; the vault may already need it",
            f"{RECOVER} (finishes the rotation, or rolls it back); never shred {new}")
    retired = _identity(old) if os.path.lexists(old) and not old_is_link else None
    current = _identity(key)
    if retired is not None and store.exists() and _opens(retired, store.vault_file):
        add("warning", f"an interrupted key rotation: the vault still opens with the old key {old}", RECOVER)
    if os.path.exists(store.backup_file) and current is not None:
        if retired is not None and _opens(retired, store.backup_file):
            add("warning", f"{store.backup_file} still opens with the retired key {old}", RECOVER)
        elif not _opens(current, store.backup_file):
            add("warning", f"{store.backup_file} does not open with the current key {key}", RECOVER)
    temps = store.stale_temps()
    if temps:
        add("warning", f"{len(temps)} stale temporary file(s) from an interrupted vault write (first: {temps[0]}); "
                       "they may hold secrets encrypted to a retired key", RECOVER)
    if os.path.lexists(old) and not old_is_link and not any(f.fix.startswith(RECOVER) for f in out):
        add("warning", f"an old age key from a completed rotation is still at {old} (a copy; the vault and its "
                       "backup no longer open with it)",
            f"keep an offline copy if you still need it, then shred -u {old}")
    return out


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _grant_findings(doc: VaultDocument, vault_file: str) -> list[Finding]:
    out: list[Finding] = []
    for name, secret in sorted(doc.secrets.items()):
        for principal in secret.principals:
            if principal not in doc.principals:
                out.append(Finding("warning", CATEGORY, f"vault secret {name}",
                                   f"granted to principal {principal}, which is not in the vault: nobody receives it "
                                   "under that name", f"ductile vault principal add {principal}, or ductile vault "
                                   f"revoke {name} {principal}", vault_file))
    return out
