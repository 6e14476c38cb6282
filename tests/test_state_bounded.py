"""Nothing grows without bound: plugin state has a cap, an event's payload is stored once,
listings are summaries cut at a byte budget, and the WAL is cut back after checkpoints."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from servehelp import PY, ServeWorld, make_serve_world

from ductile.serve import api as api_mod
from ductile.state import open_state
from ductile.state.db import JOURNAL_SIZE_LIMIT
from ductile.state.jobs import Succeeded

TOKEN = "bound-token-" + "b7" * 16

# Stores ``payload.grow`` bytes in its state, or emits an event of ``payload.emit`` bytes;
# always answers with the size of the state it was handed.
HOARD = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    p = req["payload"]
    out = {{"status": "ok", "result": {{"state_bytes": len(json.dumps(req["state"])), "payload_keys": sorted(p)}}}}
    if "grow" in p:
        out["state_updates"] = {{"blob-" + str(p.get("key", 0)): "x" * p["grow"]}}
    if "emit" in p:
        out["events"] = [{{"type": "hoard.big", "payload": {{"blob": "y" * p["emit"]}}}}]
    json.dump(out, sys.stdout)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("bounded"), textwrap.dedent("""\
        service: {unconfined: true, max_workers: 2, max_plugin_state: 64KiB}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
        plugins:
          hoard: {retry: {max_attempts: 3}}
          sink: {retry: {max_attempts: 1}}
        pipelines:
          - {name: big, on: hoard.big, steps: [{uses: sink}]}
        """), {"hoard": HOARD, "sink": HOARD}, secrets={"api-ops": TOKEN})
    w.start()
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def test_state_over_the_cap_fails_the_job_in_one_line_and_keeps_the_state(world: ServeWorld) -> None:
    ok = world.wait_job(world.trigger("hoard", "poll", {"grow": 40_000, "key": 1}, TOKEN), TOKEN)
    assert ok["status"] == "succeeded"
    over = world.wait_job(world.trigger("hoard", "poll", {"grow": 40_000, "key": 2}, TOKEN), TOKEN)
    assert (over["status"], over["attempt"]) == ("failed", 1), over  # terminal: a retry would do the same
    err = over["last_error"]
    assert "max_plugin_state" in err and "state is unchanged" in err and "\n" not in err, err
    db = sqlite3.connect(world.db)
    reason = db.execute("SELECT reason FROM job_transitions WHERE job_id = ? ORDER BY id DESC LIMIT 1",
                        (over["id"],)).fetchone()[0]
    state = json.loads(db.execute("SELECT state FROM plugin_state WHERE plugin = 'hoard'").fetchone()[0])
    db.close()
    assert reason == "state_too_large" and set(state) == {"blob-1"}
    after = world.wait_job(world.trigger("hoard", "poll", {}, TOKEN), TOKEN)
    assert after["result"]["state_bytes"] < 64 * 1024  # the next run gets the state as it was


def test_an_event_payload_is_stored_once_and_reaches_the_downstream_job(world: ServeWorld) -> None:
    size = 1024 * 1024
    source = world.wait_job(world.trigger("hoard", "poll", {"emit": size}, TOKEN), TOKEN)
    assert source["status"] == "succeeded"
    db = sqlite3.connect(world.db)
    try:
        [(child_id,)] = db.execute("SELECT id FROM jobs WHERE parent_job_id = ?", (source["id"],)).fetchall()
    finally:
        db.close()
    child = world.wait_job(child_id, TOKEN)
    assert child["status"] == "succeeded" and child["result"]["payload_keys"] == ["blob"]  # it got the payload
    assert child["payload"] == {"blob": "y" * size} and child["event"]["payload"] == {"blob": "y" * size}
    db = sqlite3.connect(world.db)
    try:
        stored = db.execute("SELECT length(payload) FROM events WHERE source_job_id = ?", (source["id"],)).fetchone()[0]
        copies = db.execute("SELECT length(payload) + length(coalesce(event, '')) FROM jobs WHERE id = ?",
                            (child_id,)).fetchone()[0]
    finally:
        db.close()
    assert stored > size and copies < 1024, (stored, copies)


def _fill_ledger(path: Path, n: int, each: int) -> list[str]:
    ids = []
    with open_state(str(path)) as db, db.write():
        for i in range(n):
            job_id = db.jobs.enqueue("hoard", "poll", {"pad": "p" * each}, max_attempts=1)
            db.jobs.claim_next(time.time() + 10)
            db.jobs.finish(job_id, Succeeded({"pad": "r" * each}), stderr_tail="e" * each)
            ids.append(job_id)
    return ids


def test_a_thousand_job_list_is_summaries_within_the_byte_budget(world: ServeWorld, tmp_path: Path) -> None:
    ids = set(_fill_ledger(world.db, 1000, 20_000))  # 60 MB of payloads, results and stderr
    status, body = world.request("GET", "/jobs?plugin=hoard&limit=1000", token=TOKEN)
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert status == 200 and {j["id"] for j in body["jobs"]} == ids
    assert len(raw) <= api_mod.LIST_BUDGET + 200 and body["truncated"] is False
    assert not {"payload", "result", "event", "stderr_tail"} & set(body["jobs"][0])
    full = world.job(body["jobs"][0]["id"], TOKEN)  # the whole job is one request away
    assert "payload" in full and "result" in full


class _Db:
    """Enough of the context for the streaming listing."""

    def __init__(self, db: Any) -> None:
        self.db = db


def test_a_listing_stops_at_the_budget_and_says_where_to_continue(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.db"
    _fill_ledger(path, 60, 10)
    monkeypatch.setattr(api_mod, "LIST_BUDGET", 8 * 1024)
    monkeypatch.setattr(api_mod, "LIST_PAGE", 7)
    with open_state(str(path)) as db:
        api = api_mod.Api(_Db(db))  # type: ignore[arg-type]

        async def collect(before: str | None) -> bytes:
            first = db.jobs.summaries(None, None, api_mod.LIST_PAGE, before=before)
            return b"".join([c async for c in api._stream(first, None, None, 1000, None)])

        pages, before = [], None
        while True:
            raw = asyncio.run(collect(before))
            assert len(raw) <= 8 * 1024 + 100
            page = json.loads(raw)
            pages.append(page)
            if not page["truncated"]:
                break
            before = page["next_before"]
            assert before == page["jobs"][-1]["id"]
        seen = [j["id"] for p in pages for j in p["jobs"]]
        assert len(pages) > 2 and len(seen) == len(set(seen)) == 60
        assert seen == [s.id for s in db.jobs.summaries(limit=100)]  # newest first, nothing skipped


def test_the_wal_is_bounded_and_a_checkpoint_cuts_it_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with open_state(str(path)) as db:
        with db.read() as conn:
            assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
        for i in range(12):
            db.plugin_state.merge_state("big", {"blob": str(i) * (2 * 1024 * 1024)})
        wal = Path(str(path) + "-wal")
        assert wal.stat().st_size > 2 * 1024 * 1024
        busy, _, _ = db.checkpoint()
        assert busy == 0 and wal.stat().st_size == 0
        assert db.plugin_state.get_state("big")["blob"][0] == "1"  # "11" * ...: the last write is kept
    assert os.path.exists(path)
