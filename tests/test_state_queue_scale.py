"""A claim costs the same with 10 or 10 000 jobs queued: the plan uses the index (never a
sort), and a plugin at its cap is skipped without reading its rows. Measured in SQLite
virtual-machine steps, which are deterministic — not in seconds, which are not."""

from __future__ import annotations

from pathlib import Path

from ductile.state import open_state
from ductile.state.db import StateDB
from ductile.state.jobs import _EARLIEST as SEEK
from ductile.state.jobs import _QUEUED_PLUGINS
from ductile.state.jobs import _RUNNING as RUNNING

T0 = 1_700_000_000.0


def _plan(db: StateDB, sql: str, args: tuple[object, ...] = ()) -> str:
    with db.read() as conn:
        return "\n".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_the_claim_queries_use_the_partial_indexes_and_never_sort(tmp_path: Path) -> None:
    with open_state(str(tmp_path / "d.db")) as db:
        for i in range(50):
            db.jobs.enqueue(f"p{i % 3}", "poll", {}, max_attempts=1)
        with db.write() as conn:
            conn.execute("ANALYZE")
        seek, plugins, running = _plan(db, SEEK, ("p1",)), _plan(db, _QUEUED_PLUGINS), _plan(db, RUNNING)
    assert "USING INDEX jobs_due (plugin=?)" in seek, seek
    touching = [line for line in plugins.splitlines() if " jobs" in line]
    assert touching and all("USING INDEX jobs_due" in line for line in touching), plugins
    assert "jobs_running" in running, running
    for plan in (seek, plugins, running):
        assert "TEMP B-TREE" not in plan, plan


def _claim_steps(db: StateDB, limits: dict[str, int]) -> tuple[int, str | None]:
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    with db.write() as conn:  # the claim joins this transaction, so it runs on this connection
        conn.set_progress_handler(count, 10)
        try:
            job = db.jobs.claim_next(T0 + 10, running_limits=limits)
        finally:
            conn.set_progress_handler(None, 10)
    return steps[0], job.plugin if job else None


def _world(tmp_path: Path, blocked_backlog: int) -> StateDB:
    db = open_state(str(tmp_path / f"q{blocked_backlog}.db"))
    db.jobs.enqueue("solo", "poll", {}, max_attempts=1, now=T0)
    db.jobs.claim_next(T0)  # solo now has its one running job
    with db.write():
        for i in range(blocked_backlog):
            db.jobs.enqueue("solo", "poll", {"i": i}, max_attempts=1, now=T0 + 1)
            db.jobs.enqueue("later", "poll", {"i": i}, max_attempts=1, not_before=T0 + 3600, now=T0 + 1)
        db.jobs.enqueue("other", "poll", {}, max_attempts=1, now=T0 + 2)
    return db


def test_a_capped_plugin_and_jobs_not_yet_due_cost_nothing_to_skip(tmp_path: Path) -> None:
    small, large = _world(tmp_path, 10), _world(tmp_path, 10_000)
    try:
        steps_small, got_small = _claim_steps(small, {"solo": 1})
        steps_large, got_large = _claim_steps(large, {"solo": 1})
        assert got_small == got_large == "other"  # the younger job of another plugin runs
        assert steps_large <= steps_small * 1.5 + 5, (steps_small, steps_large)
        claim = large.jobs.claim(T0 + 10, running_limits={"solo": 1})
        assert claim.job is None and claim.next_due == T0 + 3600  # the worker may sleep until then
    finally:
        small.close()
        large.close()
