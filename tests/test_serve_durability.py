"""Nothing lost, nothing run twice: kill -9 and restart, SIGTERM drains, 2,000 jobs, plugins
that answer garbage. Each test runs the real daemon and reads the state it leaves."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import textwrap
from collections import Counter
from pathlib import Path

import psutil
import pytest

from conftest import run_ductile
from servehelp import BAD, ECHO, PY, SLEEPER, SOLO, TALLY, ServeWorld, make_serve_world, wait_for

TOKEN = "durable-token-" + "d4" * 16


def _config(extra: str = "", *, workers: int = 2, shutdown: str = "30s") -> str:
    return textwrap.dedent(f"""\
        service: {{unconfined: true, max_workers: {workers}, shutdown_timeout: {shutdown}, kill_grace: 1s}}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{{name: ops, secret_ref: api-ops, scopes: ["*"]}}]
        """) + textwrap.dedent(extra)


def _kill_plugins(world: ServeWorld) -> None:
    """Plugins orphaned by a kill -9 of their gateway keep sleeping; end them."""
    root = str(world.plugins)
    for p in psutil.process_iter(["cmdline"], ad_value=None):
        if any(root in (arg or "") for arg in (p.info["cmdline"] or [])):
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture
def sleepy(tmp_path: Path):  # type: ignore[no-untyped-def]
    worlds: list[ServeWorld] = []

    def make(max_attempts: int, shutdown: str = "30s") -> ServeWorld:
        w = make_serve_world(tmp_path / f"w{len(worlds)}", _config(f"""\
            plugins:
              sleeper:
                retry: {{max_attempts: {max_attempts}, backoff_base: 1s}}
                timeouts: {{poll: 300s}}
              echo: {{}}
            """, shutdown=shutdown), {"sleeper": SLEEPER, "echo": ECHO}, secrets={"api-ops": TOKEN})
        worlds.append(w)
        return w

    (tmp_path / "w0").mkdir()
    for i in range(1, 3):
        (tmp_path / f"w{i}").mkdir()
    yield make
    for w in worlds:
        w.kill()
        _kill_plugins(w)


def _drained(w: ServeWorld) -> bool:
    h = w.request("GET", "/healthz")[1]
    return h["queue_depth"] == 0 and h["running"] == 0


def _running(w: ServeWorld, job_id: str) -> bool:
    return w.job(job_id, TOKEN)["status"] == "running"


@pytest.mark.parametrize("max_attempts,final", [(2, "succeeded"), (1, "dead")])
def test_kill_9_mid_job_then_restart_settles_it_as_the_retry_policy_says(sleepy, tmp_path: Path, max_attempts: int,
                                                                         final: str) -> None:
    w = sleepy(max_attempts)
    w.start()
    marker = w.base / "started"
    job_id = w.trigger("sleeper", "poll", {"marker": str(marker), "seconds": 600}, TOKEN)
    wait_for("the sleeper to start", lambda: marker.exists() and _running(w, job_id), log=w.log)
    w.kill()  # SIGKILL: no drain, the job row is left running
    w.start()
    job = w.wait_job(job_id, TOKEN)
    assert job["status"] == final, job
    outcomes = [a["outcome"] for a in job["attempts"]]
    assert outcomes[0] == "crashed"
    if final == "succeeded":
        assert outcomes == ["crashed", "succeeded"] and job["attempt"] == 2
    else:
        assert outcomes == ["crashed"] and "gateway stopped while this job was running" in job["last_error"]
    assert f"job {job_id} was running when the last gateway stopped" in w.log()
    assert w.stop() == 0


def test_sigterm_drains_finishes_short_jobs_and_requeues_the_killed_one(sleepy) -> None:
    w = sleepy(3, shutdown="4s")
    w.start()
    marker = w.base / "started"
    long_job = w.trigger("sleeper", "poll", {"marker": str(marker), "seconds": 600}, TOKEN)
    short_job = w.trigger("sleeper", "poll", {"seconds": 1.5}, TOKEN)
    wait_for("both jobs to run", lambda: marker.exists() and _running(w, long_job) and _running(w, short_job), log=w.log)
    assert w.proc is not None
    w.proc.send_signal(signal.SIGTERM)

    def draining() -> bool:
        return w.request("GET", "/healthz")[1]["status"] == "draining"

    wait_for("healthz to report draining", draining, log=w.log)
    status, body = w.request("POST", "/plugin/echo/poll", {}, token=TOKEN)
    assert status == 503 and body["fix"]
    assert w.proc.wait(60) == 0  # no second signal: that would skip the drain window
    log = w.log()
    assert "killing 1 job(s)" in log and "re-queued" in log
    db = sqlite3.connect(w.db)
    rows = dict(db.execute("select id, status || '/' || attempt from jobs").fetchall())
    assert rows[short_job] == "succeeded/1"          # finished inside the drain window
    assert rows[long_job] == "queued/0"              # killed at the deadline: back in the queue, attempt not charged
    outcome = db.execute("select outcome from job_attempts where job_id = ?", (long_job,)).fetchall()
    assert outcome == [("interrupted",)]
    db.close()
    w.start()  # the marker exists now, so the re-queued job completes at once
    job = w.wait_job(long_job, TOKEN)
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert w.stop() == 0


def test_two_thousand_jobs_all_finish_none_twice(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, _config("""\
        plugins:
          tally: {retry: {max_attempts: 3, backoff_base: 1s}}
        """, workers=4), {"tally": TALLY}, secrets={"api-ops": TOKEN})
    w.start()
    try:
        ids: list[str] = []
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=60)
        for i in range(2000):
            conn.request("POST", "/plugin/tally/poll", body=json.dumps({"i": i}).encode(),
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 202, body
            ids.append(body["job_id"])
        conn.close()
        assert len(set(ids)) == 2000

        wait_for("the queue to drain", lambda: _drained(w), deadline=600, log=w.log, interval=0.5)
    finally:
        assert w.stop() == 0
    db = sqlite3.connect(w.db)
    statuses = dict(db.execute("select id, status from jobs").fetchall())
    db.close()
    assert set(statuses) == set(ids)
    assert Counter(statuses.values()) == Counter({"succeeded": 2000})
    tally = (w.base / "state" / "unconfined" / "tally" / "tally.txt").read_text().split()
    runs = Counter(tally)
    assert set(runs) == set(ids)
    assert [job for job, n in runs.items() if n > 1] == []


@pytest.mark.parametrize("mode,needle", [("garbage", "JSON"), ("truncated", "JSON"), ("nonutf8", "UTF-8"),
                                         ("huge", "bytes")])
def test_bad_plugin_output_fails_that_job_clearly_and_serve_keeps_serving(bad_world: ServeWorld, mode: str,
                                                                         needle: str) -> None:
    job = bad_world.wait_job(bad_world.trigger("bad", "poll", {"mode": mode}, TOKEN), TOKEN)
    assert job["status"] in ("failed", "dead"), job
    assert needle in job["last_error"] and "\n" not in job["last_error"], job["last_error"]
    assert len(job["last_error"]) < 1000
    ok = bad_world.wait_job(bad_world.trigger("bad", "poll", {"mode": "ok"}, TOKEN), TOKEN)
    assert ok["status"] == "succeeded"
    assert bad_world.request("GET", "/healthz")[0] == 200


@pytest.fixture(scope="module")
def bad_world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    w = make_serve_world(tmp_path_factory.mktemp("bad"), _config("""\
        plugins:
          bad: {retry: {max_attempts: 2, backoff_base: 200ms}}
        """), {"bad": BAD}, secrets={"api-ops": TOKEN})
    w.start()
    yield w
    assert w.stop() == 0
    proc = run_ductile("job", "list", "--config", str(w.etc))
    assert proc.returncode == 0


@pytest.mark.parametrize("mode,status,attempts,reason", [
    ("exit78", "failed", 1, "exit_code_78"),       # terminal: never retried
    ("noretry", "failed", 1, "plugin_retry_false"),
    ("error", "dead", 2, "attempts_exhausted"),    # retried with backoff, then dead
])
def test_retry_policy_end_to_end(bad_world: ServeWorld, mode: str, status: str, attempts: int, reason: str) -> None:
    job = bad_world.wait_job(bad_world.trigger("bad", "poll", {"mode": mode}, TOKEN), TOKEN)
    assert (job["status"], job["attempt"], len(job["attempts"])) == (status, attempts, attempts), job
    db = sqlite3.connect(bad_world.db)
    last = db.execute("select reason from job_transitions where job_id = ? order by id desc limit 1",
                      (job["id"],)).fetchone()[0]
    db.close()
    assert last == reason


@pytest.mark.parametrize(("settings", "manifest_extra"), [
    ("{}", "concurrency_safe: false\n"),   # the manifest says so
    ("{parallelism: 1}", ""),             # upstream's plugins.<n>.parallelism says so
], ids=["not-concurrency-safe", "parallelism-1"])
def test_a_plugin_limited_to_one_job_runs_one_job_at_a_time(tmp_path: Path, settings: str, manifest_extra: str) -> None:
    w = make_serve_world(tmp_path, _config(f"""\
        plugins:
          solo: {settings}
        """, workers=4), {"solo": SOLO}, secrets={"api-ops": TOKEN})
    (w.plugins / "solo" / "manifest.yaml").write_text(
        (w.plugins / "solo" / "manifest.yaml").read_text() + manifest_extra)
    w.start()
    try:
        lock = str(w.base / "solo-busy")
        ids = [w.trigger("solo", "poll", {"lock": lock}, TOKEN) for _ in range(6)]
        results = [w.wait_job(i, TOKEN) for i in ids]
    finally:
        assert w.stop() == 0
    assert all(r["status"] == "succeeded" for r in results)
    assert [r["result"]["overlap"] for r in results] == [False] * 6


def test_kill_9_during_a_burst_of_triggers_loses_no_accepted_job_and_runs_none_twice(tmp_path: Path) -> None:
    """Eight clients trigger as fast as they can; serve is SIGKILLed mid-burst. Every job
    answered 202 must finish after the restart; a job that never started runs exactly once,
    and only a job a worker was running at the kill may run once more (its crashed attempt)."""
    import threading

    w = make_serve_world(tmp_path, _config("""\
        plugins:
          tally: {retry: {max_attempts: 3, backoff_base: 1s}}
        """, workers=2), {"tally": TALLY}, secrets={"api-ops": TOKEN})
    w.start()
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("POST", "/plugin/tally/poll", body=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                return  # the gateway is gone: an unanswered request promised nothing
            if resp.status == 202:
                with lock:
                    accepted.append(json.loads(body)["job_id"])

    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    try:
        wait_for("a few hundred accepted triggers", lambda: len(accepted) >= 300, log=w.log)
        w.kill()  # SIGKILL in the middle of the burst
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    w.start()
    try:
        wait_for("the queue to drain after the restart", lambda: _drained(w), deadline=300, log=w.log, interval=0.2)
    finally:
        assert w.stop() == 0
    db = sqlite3.connect(w.db)
    status = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    crashed = Counter(r[0] for r in db.execute("SELECT job_id FROM job_attempts WHERE outcome = 'crashed'"))
    db.close()
    assert len(set(accepted)) == len(accepted) >= 300
    assert {j: status.get(j) for j in accepted} == {j: "succeeded" for j in accepted}  # none lost
    runs = Counter((w.base / "state" / "unconfined" / "tally" / "tally.txt").read_text().split())
    for job_id in accepted:
        assert 1 <= runs[job_id] <= 1 + crashed[job_id], (job_id, runs[job_id], crashed[job_id])
    assert sum(crashed.values()) <= 2  # at most one job per worker was running at the kill


# each job leaves a marker and waits (up to a minute) until `want` markers exist: it can only
# finish early if that many of its plugin's jobs ran at the same time
BARRIER = f'''\
    #!{PY}
    import json, os, sys, time
    req = json.load(sys.stdin)
    d, want = req["payload"]["dir"], req["payload"]["want"]
    open(os.path.join(d, req["job_id"]), "w").close()
    end = time.monotonic() + 60
    while len(os.listdir(d)) < want and time.monotonic() < end:
        time.sleep(0.05)
    json.dump({{"status": "ok", "result": {{"met": len(os.listdir(d)) >= want}}}}, sys.stdout)
'''


def test_parallelism_above_one_lets_that_many_of_a_plugins_jobs_run_together(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, _config("""\
        plugins:
          pair: {parallelism: 2}
        """, workers=4), {"pair": BARRIER}, secrets={"api-ops": TOKEN})
    (w.plugins / "pair" / "manifest.yaml").write_text(  # even though it says it is not concurrency safe
        (w.plugins / "pair" / "manifest.yaml").read_text() + "concurrency_safe: false\n")
    meet = w.base / "meet"
    meet.mkdir(mode=0o777)
    os.chmod(meet, 0o777)
    w.start()
    try:
        ids = [w.trigger("pair", "poll", {"dir": str(meet), "want": 2}, TOKEN) for _ in range(2)]
        results = [w.wait_job(i, TOKEN) for i in ids]
    finally:
        assert w.stop() == 0
    assert [r["result"]["met"] for r in results] == [True, True]
