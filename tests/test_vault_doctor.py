"""doctor's vault section: key rules, decryptability, and the config checked against the vault."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_ductile
from vault_helpers import snapshot, store_at, write_config

from ductile.doctor import run_doctor
from ductile.findings import Finding
from ductile.vault import lifecycle
from ductile.vault.audit import MemoryAuditSink
from ductile.vault.document import SecretRecord, VaultDocument, utc_now

BODY = """
    plugins:
      echo: {requires_vault: true}
      notify: {vault_principal: notifier}
      worker: {requires_vault: true, vault_principal: retired}
    api:
      enabled: true
      tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
    webhooks:
      - {path: /hooks/echo, plugin: echo, secret_ref: echo-hook}
"""


def _vault(root: Path) -> list[Finding]:
    return [f for f in run_doctor(str(root)).findings if f.category == "vault"]


def _by_field(findings: list[Finding]) -> dict[str, Finding]:
    return {f.field: f for f in findings}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, BODY)


def _populate(cfg: Path) -> None:
    store, sink = store_at(cfg), MemoryAuditSink()
    lifecycle.init_vault(store, sink, "t")
    for principal in ("echo", "notifier", "retired"):
        lifecycle.add_principal(store, principal, sink, "t")
    lifecycle.revoke_principal(store, "retired", sink, "t")
    lifecycle.set_secret(store, "api-ops", "a", [], sink, "t")
    lifecycle.set_secret(store, "echo-hook", "h", ["echo"], sink, "t")


def test_without_a_vault_refs_warn_and_requires_vault_is_an_error(cfg: Path) -> None:
    found = _by_field(_vault(cfg))
    assert found["plugins.echo.requires_vault"].severity == "error"
    warning = found["secrets.vault_file"]
    assert warning.severity == "warning" and "api.tokens[0].secret_ref=api-ops" in warning.message
    assert "webhooks[0].secret_ref=echo-hook" in warning.message and "vault init" in warning.fix


def test_a_consistent_vault_has_only_the_revoked_principal_error(cfg: Path) -> None:
    _populate(cfg)
    [finding] = _vault(cfg)
    assert finding.field == "plugins.worker.requires_vault" and finding.severity == "error"
    assert "retired is revoked" in finding.message and finding.where.endswith("config.yaml:8")


def test_the_config_is_checked_against_the_vault(cfg: Path) -> None:
    _populate(cfg)
    store = store_at(cfg)

    def drift(doc: VaultDocument) -> tuple[VaultDocument, None]:
        principals = {k: v for k, v in doc.principals.items() if k not in ("echo", "notifier")}
        secrets = {"echo-hook": SecretRecord("h", ("echo", "ghost"), utc_now())}
        return replace(doc, principals=principals, secrets=secrets), None

    store.update(drift)
    found = _vault(cfg)
    fields = {(f.field, f.severity) for f in found}
    assert ("plugins.echo.requires_vault", "error") in fields
    assert ("plugins.notify.vault_principal", "warning") in fields
    assert ("api.tokens[0].secret_ref", "error") in fields
    assert ("vault secret echo-hook", "warning") in fields
    unknown = [f for f in found if f.field == "vault secret echo-hook"]
    assert sorted(f.message.split()[3].rstrip(",") for f in unknown) == ["echo", "ghost"]
    missing = _by_field(found)["api.tokens[0].secret_ref"]
    assert "api-ops" in missing.message and missing.fix == "ductile vault set api-ops < FILE"


def test_key_mode_owner_and_decryptability(cfg: Path) -> None:
    _populate(cfg)
    store = store_at(cfg)
    os.chmod(store.key_file, 0o640)
    [finding] = _vault(cfg)
    assert finding.severity == "error" and f"chmod 0600 {store.key_file}" in finding.fix
    os.chmod(store.key_file, 0o600)
    Path(store.vault_file).write_bytes(Path(store.vault_file).read_bytes()[:50])
    [finding] = _vault(cfg)
    assert finding.field == "secrets.vault_file" and "truncated or corrupted" in finding.message
    os.unlink(store.key_file)
    [finding] = _vault(cfg)
    assert finding.field == "secrets.age_key_file" and "does not" in finding.message


def test_leftover_rotation_keys_and_a_loose_vault_warn(cfg: Path) -> None:
    _populate(cfg)
    store = store_at(cfg)
    store.rotate_key()
    os.chmod(store.vault_file, 0o644)
    found = [f for f in _vault(cfg) if f.severity == "warning"]
    assert any(store.old_key_file in f.message and f.fix.endswith(f"shred -u {store.old_key_file}") for f in found)
    assert any("0644" in f.message and f.fix == f"chmod 0600 {store.vault_file}" for f in found)


def test_doctor_changes_nothing_on_disk(cfg: Path) -> None:
    _populate(cfg)
    os.unlink(store_at(cfg).lock_file)
    before = snapshot(cfg)
    proc = run_ductile("doctor", "--json", "--config", str(cfg))
    assert proc.returncode == 1  # the revoked principal of `worker`
    report = json.loads(proc.stdout)
    assert any(f["category"] == "vault" for f in report["findings"])
    assert snapshot(cfg) == before
