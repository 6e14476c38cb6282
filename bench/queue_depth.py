#!/usr/bin/env python3
"""Queue scaling: does anything slow down as the queue gets deep?

    .venv/bin/python bench/queue_depth.py [DEPTHS...]      (default 1000 20000 100000)

For each depth the state database is filled with that many queued jobs that are not yet
due (the backlog a long outage or a slow plugin leaves), then:

* claim latency: the queue's own claim (``JobQueue.claim``) of a due job, median of 200;
* intake: 300 triggers over HTTP from 8 clients against a running serve, until all are 202;
* drain: serve (max_workers 2, unconfined, a /bin/sh plugin) running those 300 to the end;
* idle CPU: the gateway's CPU use over 5 s with the backlog queued and nothing runnable.
"""

from __future__ import annotations

import http.client
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRIVIAL_SH, World, destroy, machine, make_world, median, table  # noqa: E402

CLIENTS = 8


def fill(world: World, depth: int) -> None:
    from ductile.state import open_state

    with open_state(str(world.base / "state" / "ductile.db")) as db, db.write():
        far = time.time() + 10 * 365 * 86400
        for i in range(depth):
            db.jobs.enqueue("sh", "poll", {"i": i}, max_attempts=1, not_before=far)


def claim_latency(world: World) -> float:
    from ductile.state import open_state
    from ductile.state.jobs import Succeeded

    samples = []
    with open_state(str(world.base / "state" / "ductile.db")) as db:
        for _ in range(200):
            job_id = db.jobs.enqueue("sh", "poll", {}, max_attempts=1)
            start = time.perf_counter()
            claim = db.jobs.claim(time.time())
            samples.append(time.perf_counter() - start)
            assert claim.job is not None and claim.job.id == job_id
            db.jobs.finish(job_id, Succeeded())
    return median(samples)


def intake_and_drain(world: World, jobs: int = 300) -> tuple[float, float]:
    db = sqlite3.connect(f"file:{world.base / 'state' / 'ductile.db'}?mode=ro", uri=True, timeout=30)
    before = db.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0]

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=60)
        for _ in range(n):
            conn.request("POST", "/plugin/sh/poll", body=b"{}", headers={"Authorization": f"Bearer {world.token}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202, resp.status
        conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, [jobs // CLIENTS + (i < jobs % CLIENTS) for i in range(CLIENTS)]))
    intake = time.perf_counter() - start
    while db.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()[0] < before + jobs:
        time.sleep(0.005)
    drain = time.perf_counter() - start
    db.close()
    return jobs / intake, jobs / drain


def idle_cpu(world: World, seconds: float = 5.0) -> float:
    import psutil

    assert world.proc is not None
    proc = psutil.Process(world.proc.pid)
    time.sleep(1.0)  # let the last jobs' bookkeeping settle
    before, t0 = proc.cpu_times(), time.perf_counter()
    time.sleep(seconds)
    after, t1 = proc.cpu_times(), time.perf_counter()
    return (after.user + after.system - before.user - before.system) / (t1 - t0)


def main() -> None:
    depths = [int(a) for a in sys.argv[1:] if a.isdigit()] or [1000, 20000, 100000]
    rows = []
    for depth in depths:
        world = make_world({"sh": TRIVIAL_SH}, confined=False)
        try:
            fill(world, depth)
            latency = claim_latency(world)
            world.serve()
            intake, drain = intake_and_drain(world)
            cpu = idle_cpu(world)
        finally:
            destroy(world)
        rows.append([f"{depth:,}", f"{latency * 1e6:.0f}", f"{intake:.0f}", f"{drain:.0f}", f"{cpu:.1%}"])
    table("queue scaling: a backlog of not-yet-due jobs under the work", ["queued", "claim us (median)",
                                                                          "intake triggers/s", "drain jobs/s",
                                                                          "idle CPU"], rows)
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
