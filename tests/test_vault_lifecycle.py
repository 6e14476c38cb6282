"""Audited operations: every lifecycle op and compose failure reaches the sink, with names only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from vault_helpers import canary, store_at

from ductile.config.model import Config, PluginConfig
from ductile.errors import DuctileError, VaultError, VaultPrincipalRequired
from ductile.vault import lifecycle
from ductile.vault.audit import (
    ATTEMPT,
    DENIED,
    OK,
    REFUSED,
    AuditSink,
    MemoryAuditSink,
    NullAuditSink,
    default_sink,
)
from ductile.vault.document import SecretRecord, VaultDocument, utc_now
from ductile.vault.store import VaultStore


@pytest.fixture
def world(tmp_path: Path) -> tuple[VaultStore, MemoryAuditSink]:
    return store_at(tmp_path), MemoryAuditSink()


def test_every_lifecycle_operation_is_recorded(world: tuple[VaultStore, MemoryAuditSink]) -> None:
    store, sink = world
    lifecycle.init_vault(store, sink, "cli:test")
    lifecycle.add_principal(store, "echo", sink, "cli:test")
    lifecycle.add_principal(store, "other", sink, "cli:test")
    out = lifecycle.set_secret(store, "tok", "v1", ["echo"], sink, "cli:test")
    assert out.created and out.principals == ("echo",)
    out = lifecycle.set_secret(store, "tok", "v2", [], sink, "cli:test")
    assert not out.created and out.roll_count == 1
    assert lifecycle.grant_secret(store, "tok", "other", sink, "cli:test")
    assert lifecycle.revoke_secret(store, "tok", "other", sink, "cli:test")
    lifecycle.revoke_principal(store, "other", sink, "cli:test")
    lifecycle.rotate_key(store, sink, "cli:test")
    attempts, outcomes = sink.records[0::2], sink.records[1::2]
    assert [(r.op, r.principal, r.outcome) for r in outcomes] == [
        ("init", "", OK), ("principal_add", "echo", OK), ("principal_add", "other", OK), ("set", "echo", OK),
        ("set", "", OK), ("grant", "other", OK), ("revoke", "other", OK), ("principal_revoke", "other", OK),
        ("rotate_key", "", OK)]
    # every operation is on record before it touches the vault: a crash leaves the attempt
    assert [(r.op, r.principal, r.outcome) for r in attempts] == [(r.op, r.principal, ATTEMPT) for r in outcomes]
    assert all(r.actor == "cli:test" for r in sink.records)
    assert outcomes[4].detail == "secret=tok rolled roll_count=1"


def test_refused_operations_are_recorded_and_re_raised(world: tuple[VaultStore, MemoryAuditSink]) -> None:
    store, sink = world
    with pytest.raises(VaultError):
        lifecycle.add_principal(store, "echo", sink, "cli:test")  # no vault yet
    lifecycle.init_vault(store, sink, "cli:test")
    with pytest.raises(VaultError):
        lifecycle.init_vault(store, sink, "cli:test")
    with pytest.raises(VaultError):
        lifecycle.set_secret(store, "tok", "v", ["ghost"], sink, "cli:test")
    assert [(r.op, r.outcome) for r in sink.records if r.outcome != ATTEMPT] == [
        ("principal_add", REFUSED), ("init", OK), ("init", REFUSED), ("set", REFUSED)]
    assert "principal ghost" in sink.records[-1].detail or "is not in the vault" in sink.records[-1].detail


def test_compose_for_plugin_delivers_and_audits_failures_and_denials(
        world: tuple[VaultStore, MemoryAuditSink]) -> None:
    store, sink = world
    setup = MemoryAuditSink()
    assert lifecycle.compose_for_plugin(store, "echo", None, sink).secrets == {}  # no vault: opt-out
    with pytest.raises(VaultPrincipalRequired):
        lifecycle.compose_for_plugin(store, "echo", PluginConfig(requires_vault=True), sink)
    lifecycle.init_vault(store, setup, "t")
    lifecycle.add_principal(store, "echo", setup, "t")
    lifecycle.add_principal(store, "gone", setup, "t")
    lifecycle.set_secret(store, "tok", "v1", ["echo", "gone"], setup, "t")
    assert lifecycle.compose_for_plugin(store, "echo", None, sink).secrets == {"tok": "v1"}
    assert lifecycle.compose_for_plugin(store, "my_echo", PluginConfig(vault_principal="echo"), sink).secrets == {
        "tok": "v1"}
    lifecycle.revoke_principal(store, "gone", setup, "t")
    with pytest.raises(VaultPrincipalRequired, match="revoked"):
        lifecycle.compose_for_plugin(store, "gone", None, sink)
    with pytest.raises(VaultPrincipalRequired, match="not in the vault"):
        lifecycle.compose_for_plugin(store, "ghost", PluginConfig(requires_vault=True), sink)
    assert [(r.op, r.principal, r.outcome) for r in sink.records] == [
        ("compose_refused", "echo", REFUSED), ("compose_refused", "gone", REFUSED),
        ("compose_refused", "ghost", REFUSED)]
    assert all(r.actor == "gateway" for r in sink.records)


def test_a_grant_to_an_unknown_principal_surfaces_as_a_denial(tmp_path: Path) -> None:
    store, sink = store_at(tmp_path), MemoryAuditSink()
    lifecycle.init_vault(store, sink, "t")

    def hand_edit(doc: VaultDocument) -> tuple[VaultDocument, None]:
        # what a document edited with the age CLI may hold: a grant to a principal never added
        return replace(doc, secrets={"tok": SecretRecord("v", ("ghost",), utc_now())}), None

    store.update(hand_edit)
    sink = MemoryAuditSink()
    assert lifecycle.compose_for_plugin(store, "ghost", None, sink).secrets == {}
    [row] = sink.records
    assert (row.op, row.outcome, row.detail) == ("compose_denial", DENIED,
                                                 "plugin=ghost secret=tok reason=principal_unknown")


def test_an_unreadable_vault_fails_every_plugin_closed_and_is_audited(
        world: tuple[VaultStore, MemoryAuditSink]) -> None:
    store, sink = world
    lifecycle.init_vault(store, MemoryAuditSink(), "t")
    Path(store.vault_file).write_bytes(b"garbage")
    with pytest.raises(VaultError):
        lifecycle.compose_for_plugin(store, "echo", None, sink)
    assert [(r.op, r.outcome) for r in sink.records] == [("compose_refused", REFUSED)]


def test_values_never_reach_the_sink_errors_or_reprs(world: tuple[VaultStore, MemoryAuditSink]) -> None:
    store, sink = world
    value = canary()
    texts: list[str] = []
    init = lifecycle.init_vault(store, sink, "t")
    lifecycle.add_principal(store, "echo", sink, "t")
    texts.append(repr(lifecycle.set_secret(store, "tok", value, ["echo"], sink, "t")))
    for attempt in (lambda: lifecycle.set_secret(store, "tok", value, ["ghost"], sink, "t"),
                    lambda: lifecycle.set_secret(store, "bad name", value, [], sink, "t"),
                    lambda: lifecycle.compose_for_plugin(store, "ghost", PluginConfig(requires_vault=True), sink)):
        with pytest.raises(DuctileError) as info:
            attempt()
        texts += [str(info.value), repr(info.value), info.value.one_line(), repr(info.value.as_dict())]
    comp = lifecycle.compose_for_plugin(store, "echo", None, sink)
    assert comp.secrets == {"tok": value}
    doc = store.read()
    texts += [repr(comp), str(comp), repr(doc), str(doc), repr(doc.secrets), repr(store), repr(init),
              repr(lifecycle.list_secrets(doc)), repr(lifecycle.list_principals(doc)), repr(sink.records)]
    for text in texts:
        assert value not in text
    assert value.encode() not in Path(store.vault_file).read_bytes()  # encrypted at rest


def test_default_sink_writes_the_state_db(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ductile.config.model import StateConfig
    from ductile.state.db import open_state

    db = str(tmp_path / "state" / "ductile.db")
    sink: AuditSink = default_sink(Config(state=StateConfig(path=db)))
    sink.record("set", "echo", "t", OK, "secret=tok")
    [row] = open_state(db).audit.list_audit()
    assert (row["op"], row["principal"], row["actor"], row["outcome"]) == ("set", "echo", "t", OK)
    NullAuditSink().record("set", "echo", "t", OK, "kept nowhere")
