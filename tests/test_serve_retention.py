"""Retention under load: a real serve prunes a ledger of hundreds of thousands of old rows
in small batches while it keeps answering /healthz and queueing, running and recording
new jobs; `ductile job prune` counts and prunes the same way. No timed assertion: what is
asserted is that the gateway answered and recorded during the prune, not how fast."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from conftest import run_ductile
from servehelp import ECHO, ServeWorld, make_serve_world, wait_for

OPS = "ops-token-" + "a1" * 16
OLD_JOBS = 50_000
DAY = 86400.0

CONFIG = """\
    service: {unconfined: true, max_workers: 2, shutdown_timeout: 5s}
    plugins:
      echo: {}
    api:
      listen: 127.0.0.1:@PORT@
      tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
"""


def fill(db_path: Path, n: int, age: float) -> list[str]:
    """``n`` finished jobs (an attempt and two transitions each) and an event each, all
    ``age`` seconds old, plus two old jobs that must survive: one queued, one running."""
    from ductile.state import open_state

    open_state(str(db_path)).close()  # created and migrated by the gateway's own code
    when = time.time() - age
    conn = sqlite3.connect(db_path)
    with conn:
        ids = [str(uuid.uuid4()) for _ in range(n)]
        conn.executemany("INSERT INTO jobs (id, plugin, command, payload, status, attempt, max_attempts,"
                         " next_attempt_at, created_at, updated_at, started_at, finished_at, trigger)"
                         " VALUES (?, 'echo', 'poll', '{}', 'succeeded', 1, 1, ?, ?, ?, ?, ?, 'schedule')",
                         [(i, when, when, when, when, when) for i in ids])
        conn.executemany("INSERT INTO job_attempts (job_id, attempt, started_at, finished_at, outcome)"
                         " VALUES (?, 1, ?, ?, 'succeeded')", [(i, when, when) for i in ids])
        conn.executemany("INSERT INTO job_transitions (job_id, from_status, to_status, at, reason)"
                         " VALUES (?, ?, ?, ?, ?)", [(i, s, t, when, "x") for i in ids
                                                     for s, t in ((None, "queued"), ("queued", "succeeded"))])
        conn.executemany("INSERT INTO events (id, type, payload, source_job_id, plugin, depth, created_at)"
                         " VALUES (?, 'echo.done', '{}', ?, 'echo', 0, ?)", [(str(uuid.uuid4()), i, when) for i in ids])
        keep = [str(uuid.uuid4()), str(uuid.uuid4())]
        conn.executemany("INSERT INTO jobs (id, plugin, command, payload, status, attempt, max_attempts,"
                         " next_attempt_at, created_at, updated_at) VALUES (?, 'echo', 'poll', '{}', ?, 0, 1, ?, ?, ?)",
                         [(keep[0], "queued", time.time() + 10 * 365 * DAY, when, when)])
    conn.close()
    return keep


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("retention"), CONFIG, {"echo": ECHO}, secrets={"api-ops": OPS})
    w.state_extra = "retention: {jobs: 30d, events: 30d, audit: 365d, every: 2s}"
    w.write_config()
    return w


def count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_job_prune_dry_run_counts_without_changing_anything(world: ServeWorld) -> None:
    fill(world.db, 1000, 40 * DAY)
    before = count(world.db, "SELECT count(*) FROM jobs")
    proc = run_ductile("job", "prune", "--config", str(world.etc), "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and report["jobs"] == 1000 and report["events"] == 1000
    assert count(world.db, "SELECT count(*) FROM jobs") == before
    proc = run_ductile("job", "prune", "--config", str(world.etc), "--older-than", "90d")
    assert proc.returncode == 0 and "pruned 0 job(s)" in proc.stdout, proc.stderr
    proc = run_ductile("job", "prune", "--config", str(world.etc), "--older-than", "soon")
    assert proc.returncode == 2 and "--older-than" in proc.stderr


def test_serve_keeps_answering_and_recording_while_it_prunes(world: ServeWorld) -> None:
    keep = fill(world.db, OLD_JOBS, 40 * DAY)
    old_total = count(world.db, "SELECT count(*) FROM jobs")
    world.start()
    try:
        answered, recorded = 0, []
        # while the old rows are being pruned, the API answers and new jobs run and are recorded
        while count(world.db, "SELECT count(*) FROM jobs WHERE created_at < strftime('%s','now') - 86400 "
                              "AND status = 'succeeded'") > 0:
            status, body = world.request("GET", "/healthz")
            assert status == 200 and body["status"] == "ok", body
            answered += 1
            if len(recorded) < 5:
                recorded.append(world.trigger("echo", "poll", {"n": len(recorded)}, OPS))
            time.sleep(0.2)
            if answered > 3000:
                raise AssertionError(f"the prune did not finish:\n{world.log()[-3000:]}")
        assert answered >= 1 and recorded, "the prune finished before the gateway was asked anything"
        for job_id in recorded:
            assert world.wait_job(job_id, OPS)["status"] == "succeeded"
        wait_for("the retention log line", lambda: "retention: pruned" in world.log(), log=world.log)
    finally:
        assert world.stop() == 0, world.log()[-3000:]
    assert count(world.db, "SELECT count(*) FROM jobs") < old_total - OLD_JOBS
    assert count(world.db, f"SELECT count(*) FROM jobs WHERE id = '{keep[0]}'") == 1  # queued: never pruned
    assert count(world.db, "SELECT count(*) FROM job_attempts a LEFT JOIN jobs j ON j.id = a.job_id"
                           " WHERE j.id IS NULL") == 0
    assert count(world.db, "SELECT count(*) FROM events WHERE created_at < strftime('%s','now') - 86400") == 0
    line = next(ln for ln in world.log().splitlines() if "retention: pruned" in ln)
    assert json.loads(line)["batches"] > 1  # small batches, never one long write
