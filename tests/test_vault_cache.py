"""The gateway's vault reader (``CachedVault``): a job gets the vault as it is at its
spawn — a roll, a grant, a revocation or a new key is seen by the next job — while an
unchanged vault is decrypted once, not once per job."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from servehelp import plugin
from vault_helpers import store_at

from ductile.config import load_config
from ductile.errors import VaultError
from ductile.privsep.gate import evaluate_boot_gate
from ductile.runtime import executor as executor_mod
from ductile.runtime.boot import Assessment, Runtime, discover
from ductile.runtime.executor import Job
from ductile.runtime.spawn import RawResult
from ductile.runtime.wiring import make_executor
from ductile.state import open_state
from ductile.vault import cache as cache_mod
from ductile.vault import lifecycle
from ductile.vault.audit import NullAuditSink
from ductile.vault.cache import CachedVault, file_facts, racy
from ductile.vault.store import VaultStore

LATER = 10**19  # a clock far past every file's timestamps: nothing is racy


@pytest.fixture
def store(tmp_path: Path) -> VaultStore:
    s = store_at(tmp_path)
    lifecycle.init_vault(s, NullAuditSink(), "test")
    lifecycle.add_principal(s, "echo", NullAuditSink(), "test")
    lifecycle.set_secret(s, "tok", "v1", ["echo"], NullAuditSink(), "test")
    return s


def test_an_unchanged_vault_is_decrypted_once(store: VaultStore) -> None:
    reader = CachedVault(store, clock_ns=lambda: LATER)
    first = reader.read()
    assert reader.read() is first and reader.read_if_present() is first
    assert reader.decrypted == 1


@pytest.mark.parametrize("change", ["roll", "grant", "revoke_principal", "rotate_key"])
def test_every_vault_operation_is_seen_by_the_next_read(store: VaultStore, change: str) -> None:
    reader = CachedVault(store, clock_ns=lambda: LATER)
    assert reader.read().secrets["tok"].value == "v1"
    sink = NullAuditSink()
    if change == "roll":
        lifecycle.set_secret(store, "tok", "v2", [], sink, "test")
    elif change == "grant":
        lifecycle.add_principal(store, "other", sink, "test")
        lifecycle.grant_secret(store, "tok", "other", sink, "test")
    elif change == "revoke_principal":
        lifecycle.revoke_principal(store, "echo", sink, "test")
    else:
        lifecycle.rotate_key(store, sink, "test")
    doc = reader.read()
    assert reader.decrypted == 2
    assert doc == store.read()
    expected = {"roll": lambda: doc.secrets["tok"].value == "v2",
                "grant": lambda: doc.secrets["tok"].principals == ("echo", "other"),
                "revoke_principal": lambda: doc.principals["echo"].status == "revoked",
                "rotate_key": lambda: doc.secrets["tok"].value == "v1"}[change]
    assert expected()


def test_a_change_in_place_is_seen_too(store: VaultStore) -> None:
    """Not a rename: the same bytes written back into the same inode still change ctime."""
    reader = CachedVault(store, clock_ns=lambda: LATER)
    reader.read()
    data = Path(store.vault_file).read_bytes()
    with open(store.vault_file, "r+b") as fh:
        fh.write(data)
    reader.read()
    assert reader.decrypted == 2


def test_a_key_made_readable_by_others_is_refused_again_not_served_from_memory(store: VaultStore) -> None:
    reader = CachedVault(store, clock_ns=lambda: LATER)
    reader.read()
    os.chmod(store.key_file, 0o644)
    with pytest.raises(VaultError, match="rotate"):
        reader.read()
    os.chmod(store.key_file, 0o600)


def test_a_vault_that_just_changed_is_not_kept(store: VaultStore) -> None:
    """Timestamps within RACY_NS of the read cannot tell two writes in one clock tick apart."""
    facts = (file_facts(store.key_file), file_facts(store.vault_file))
    newest = max(max(f[3], f[4]) for f in facts)
    assert racy(facts, newest + cache_mod.RACY_NS - 1) and not racy(facts, newest + cache_mod.RACY_NS)
    reader = CachedVault(store, clock_ns=lambda: newest)
    reader.read()
    reader.read()
    assert reader.decrypted == 2


def test_a_removed_vault_is_no_vault(store: VaultStore) -> None:
    reader = CachedVault(store, clock_ns=lambda: LATER)
    reader.read()
    os.unlink(store.vault_file)
    assert reader.read_if_present() is None
    with pytest.raises(VaultError, match="does not exist"):
        reader.read()


# ---- wired into the executor: what the plugin receives, job after job ----

@pytest.fixture
def wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    (tmp_path / "etc").mkdir()
    (tmp_path / "plugins").mkdir()
    plugin(tmp_path / "plugins", "echo", "#!/usr/bin/python3\n", commands="[{name: poll, type: read}]")
    (tmp_path / "etc" / "config.yaml").write_text(textwrap.dedent("""\
        plugin_roots: [../plugins]
        state: {path: ../state/ductile.db}
        secrets: {age_key_file: ../secret/age.key, vault_file: ../state/vault.age}
        api: {enabled: false}
        service: {unconfined: true}
        plugins: {echo: {}}
        """))
    store = VaultStore(str(tmp_path / "secret" / "age.key"), str(tmp_path / "state" / "vault.age"))
    lifecycle.init_vault(store, NullAuditSink(), "test")
    lifecycle.add_principal(store, "echo", NullAuditSink(), "test")
    lifecycle.set_secret(store, "tok", "v1", ["echo"], NullAuditSink(), "test")
    loaded = load_config(str(tmp_path / "etc"))
    runtime = Runtime(loaded, discover(loaded), Assessment(evaluate_boot_gate(False, 0, True), False, os.geteuid(), None),
                      gateway_env={"PATH": "/usr/bin"})
    received: list[dict[str, Any]] = []

    def spawn(spec, request, on_start=None, cancel=None):  # type: ignore[no-untyped-def]
        received.append(json.loads(request.removeprefix(b"go\n")).get("secrets", {}))
        return RawResult(0, b'{"status": "ok", "result": {}}', False, b"", False, 1)

    decrypts: list[str] = []
    real_read = VaultStore.read

    def counted(self: VaultStore, identity: Any = None) -> Any:
        decrypts.append(self.vault_file)
        return real_read(self, identity)

    monkeypatch.setattr(executor_mod, "spawn", spawn)
    monkeypatch.setattr(VaultStore, "read", counted)
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)  # files written a moment ago may be kept
    db = open_state(str(tmp_path / "state" / "ductile.db"))
    yield make_executor(runtime, db), store, received, decrypts
    db.close()


def test_the_next_job_gets_a_rolled_secret_and_a_revoked_principal_gets_nothing(wired) -> None:  # type: ignore[no-untyped-def]
    executor, store, received, decrypts = wired
    for _ in range(2):
        assert executor.run(Job("echo", "poll")).outcome.status == "succeeded"
    assert len(decrypts) == 1 and received == [{"tok": "v1"}, {"tok": "v1"}]
    lifecycle.set_secret(store, "tok", "v2", [], NullAuditSink(), "test")
    assert executor.run(Job("echo", "poll")).outcome.status == "succeeded"
    assert received[-1] == {"tok": "v2"}
    lifecycle.revoke_principal(store, "echo", NullAuditSink(), "test")
    result = executor.run(Job("echo", "poll"))
    assert result.outcome.status == "failed" and "revoked" in result.outcome.reason
    assert len(received) == 3  # nothing was spawned for the revoked principal
