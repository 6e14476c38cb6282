"""doctor's vault section: can secret zero open the vault, and does the config match its contents?

Read-only: the key and vault are opened and decrypted in memory, nothing is written or locked.
"""

from __future__ import annotations

import os
import stat

from ductile.config import LoadedConfig
from ductile.config.model import Config
from ductile.errors import VaultError
from ductile.findings import Finding
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
    key_problems = _key_findings(store, key_at)
    if key_problems:
        return key_problems
    try:
        doc = store.read()
    except VaultError as err:
        return [Finding("error", CATEGORY, "secrets.vault_file", err.message, err.fix, vault_at)]

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
    if os.path.lexists(store.old_key_file):
        out.append(Finding("warning", CATEGORY, "secrets.age_key_file",
                           f"an old age key from a key rotation is still at {store.old_key_file}",
                           f"shred -u {store.old_key_file}", key_at))
    if os.path.lexists(store.new_key_file):
        out.append(Finding("warning", CATEGORY, "secrets.age_key_file",
                           f"an interrupted key rotation left {store.new_key_file}; the vault opens with {store.key_file}",
                           f"shred -u {store.new_key_file}, then ductile vault rotate-key again", key_at))
    return out


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
