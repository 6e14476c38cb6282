"""Plugin state, the event log and the vault audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ductile.errors import StateError
from ductile.state import StateDB, open_state
from ductile.state.audit import DETAIL_MAX, STRING_MAX


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with open_state(str(tmp_path / "ductile.db")) as state:
        yield state


def test_plugin_state_starts_empty_and_merges_shallowly(db: StateDB) -> None:
    ps = db.plugin_state
    assert ps.get_state("echo") == {}
    assert ps.merge_state("echo", {"cursor": 1, "seen": {"a": 1}}) == {"cursor": 1, "seen": {"a": 1}}
    assert ps.merge_state("echo", {"seen": {"b": 2}, "gone": None}) == {"cursor": 1, "seen": {"b": 2}, "gone": None}
    assert ps.get_state("echo") == {"cursor": 1, "seen": {"b": 2}, "gone": None}
    assert ps.get_state("other") == {}


def test_plugin_state_refuses_a_non_object(db: StateDB) -> None:
    with pytest.raises(StateError, match="plugins.echo.state_updates"):
        db.plugin_state.merge_state("echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert db.plugin_state.get_state("echo") == {}


def test_plugin_state_update_is_atomic_with_a_failing_caller(db: StateDB) -> None:
    db.plugin_state.merge_state("echo", {"n": 1})
    with pytest.raises(RuntimeError), db.write():
        db.plugin_state.merge_state("echo", {"n": 2})
        raise RuntimeError("the job's finish failed")
    assert db.plugin_state.get_state("echo") == {"n": 1}


def test_events_by_job_and_type_in_order(db: StateDB) -> None:
    job = db.jobs.enqueue("echo", "poll", {}, max_attempts=1)
    first = db.events.record_event("echo.done", {"n": 1}, source_job_id=job, plugin="echo")
    second = db.events.record_event("plugin.drop_failed", {"account": "default"}, source_job_id=job,
                                    plugin="echo", depth=0)
    db.events.record_event("echo.done", {"n": 3}, plugin="echo", depth=2)
    assert [e.id for e in db.events.list_events(job_id=job)] == [first, second]
    assert [e.payload["n"] for e in db.events.list_events(type="echo.done")] == [1, 3]
    assert [e.depth for e in db.events.list_events(limit=2)] == [0, 2]  # the latest two, oldest first
    assert db.events.list_events(job_id=job)[1].as_dict()["type"] == "plugin.drop_failed"


def test_event_refusals(db: StateDB) -> None:
    with pytest.raises(StateError, match="event type"):
        db.events.record_event("", {})
    with pytest.raises(StateError, match="depth"):
        db.events.record_event("x", {}, depth=-1)
    with pytest.raises(StateError):
        db.events.record_event("x", {}, source_job_id="no-such-job")
    assert db.events.list_events() == []


def test_audit_rows_newest_first_and_by_principal(db: StateDB) -> None:
    db.audit.record_audit("secret.set", "echo", "root", "ok", {"secret": "api-key"})
    db.audit.record_audit("compose", "github", "serve", "denied", {"reason": "revoked"})
    db.audit.record_audit("principal.add", "echo", "root", "ok", None)
    rows = db.audit.list_audit()
    assert [r["op"] for r in rows] == ["principal.add", "compose", "secret.set"]
    assert set(rows[0]) == {"at", "op", "principal", "actor", "outcome", "detail"}
    assert [r["op"] for r in db.audit.list_audit(principal="echo")] == ["principal.add", "secret.set"]
    assert db.audit.list_audit(limit=1)[0]["detail"] == {}


def test_audit_detail_is_capped(db: StateDB) -> None:
    db.audit.record_audit("secret.set", "p" * 1000, "root", "ok",
                          {"name": "x" * 10_000, "many": [f"n{i}" * 20 for i in range(1000)]})
    [row] = db.audit.list_audit()
    assert len(row["principal"]) <= 128
    assert len(json.dumps(row["detail"])) <= DETAIL_MAX
    db.audit.record_audit("secret.set", "echo", "root", "ok", {"name": "y" * 10_000})
    [row, _] = db.audit.list_audit()
    assert len(row["detail"]["name"]) == STRING_MAX


def test_schedule_fire_is_once_per_slot_and_never_backwards(tmp_path) -> None:
    from ductile.state import open_state
    from ductile.state.schedules import dedupe_key

    with open_state(str(tmp_path / "s.db")) as db:
        first = db.schedules.fire("echo#0", "echo", "poll", 600.0, payload={}, max_attempts=1)
        assert first is not None
        assert db.schedules.fire("echo#0", "echo", "poll", 600.0, payload={}, max_attempts=1) is None
        assert db.schedules.fire("echo#0", "echo", "poll", 300.0, payload={}, max_attempts=1) is None
        assert db.schedules.last_slot("echo#0") == 600.0
        later = db.schedules.fire("echo#0", "echo", "poll", 900.0, payload={}, max_attempts=1)
        assert later not in (None, first)
        assert db.jobs.get(first).dedupe_key == dedupe_key("echo#0", 600.0)
        db.schedules.baseline("cron#0", "echo", "poll", 60.0)
        db.schedules.baseline("cron#0", "echo", "poll", 120.0)  # a baseline never moves a known schedule
        assert db.schedules.last_slot("cron#0") == 60.0
        assert len(db.jobs.list_jobs()) == 2


def test_list_jobs_restricted_to_a_set_of_plugins(tmp_path) -> None:
    from ductile.state import open_state

    with open_state(str(tmp_path / "s.db")) as db:
        for plugin in ("a", "b", "c"):
            db.jobs.enqueue(plugin, "poll", {}, max_attempts=1)
        assert {j.plugin for j in db.jobs.list_jobs(plugins=["a", "c"])} == {"a", "c"}
        assert db.jobs.list_jobs(plugins=[]) == []
