"""The queue across real processes: concurrent claimers and ``kill -9`` at the worst moments.

No timing assertions: the children wait on a file barrier and the parent only bounds each
wait generously so a deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ductile.state import open_state

GUARD = 300  # seconds: a deadlock guard, not an expectation

CLAIMER = textwrap.dedent("""
    import os, sys, threading, time
    from ductile.state import open_state
    db_path, go, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = open_state(db_path)  # a claimer writes: a writer opening
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    claimed, lock = [], threading.Lock()
    def work():
        while True:
            job = db.jobs.claim_next(time.time() + 3600)
            if job is None:
                return
            with lock:
                claimed.append(job.id)
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool: t.start()
    for t in pool: t.join()
    print("\\n".join(claimed), flush=True)
""")


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _expect_line(proc: subprocess.Popen[str], expected: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate(timeout=GUARD)
        pytest.fail(f"child said {line!r}, expected {expected!r}; stderr:\n{err}")
    return line


def test_two_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    path = str(tmp_path / "ductile.db")
    with open_state(path) as db:
        jobs = {db.jobs.enqueue(f"p{i % 3}", "poll", {"i": i}, max_attempts=1) for i in range(300)}
    go = tmp_path / "go"
    children = [_spawn(CLAIMER, path, str(go), "2") for _ in range(2)]
    for child in children:
        _expect_line(child, "ready")
    go.touch()
    claims: list[list[str]] = []
    for child in children:
        out, err = child.communicate(timeout=GUARD)
        assert child.returncode == 0, err
        claims.append([line for line in out.splitlines() if line])
    every = [job_id for claimed in claims for job_id in claimed]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert set(every) == jobs, "a job was never claimed"
    with open_state(path) as db:
        assert db.jobs.queue_depth() == 0
        for job_id in list(jobs)[:20]:
            assert [t.reason for t in db.jobs.transitions(job_id)] == ["enqueued", "claimed"]
            assert db.jobs.get(job_id).attempt == 1  # type: ignore[union-attr]


CAPPED = textwrap.dedent("""
    import os, sys, time
    from ductile.state import open_state
    db = open_state(sys.argv[1])
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.005)
    got = db.jobs.claim_next(time.time() + 3600, running_limits={"serial": 1})
    print(got.id if got else "none", flush=True)
""")


def test_a_cap_of_one_holds_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "ductile.db")
    with open_state(path) as db:
        for _ in range(4):
            db.jobs.enqueue("serial", "poll", {}, max_attempts=1)
    go = tmp_path / "go"
    children = [_spawn(CAPPED, path, str(go)) for _ in range(4)]
    for child in children:
        _expect_line(child, "ready")
    go.touch()
    answers = []
    for child in children:
        out, err = child.communicate(timeout=GUARD)
        assert child.returncode == 0, err
        answers.append(out.strip())
    assert sum(a != "none" for a in answers) == 1, answers
    with open_state(path) as db:
        assert len(db.jobs.list_jobs(status="running")) == 1


HOLDER = textwrap.dedent("""
    import sys, time
    from ductile.state import open_state
    db = open_state(sys.argv[1])
    job = db.jobs.claim_next(time.time() + 3600)
    print(job.id, flush=True)   # the row is committed as running; now "run the plugin"
    time.sleep(3600)
""")


@pytest.mark.parametrize(("max_attempts", "expected"), [(3, "queued"), (1, "dead")])
def test_kill_9_while_a_job_runs_is_recovered(tmp_path: Path, max_attempts: int, expected: str) -> None:
    path = str(tmp_path / "ductile.db")
    with open_state(path) as db:
        job_id = db.jobs.enqueue("echo", "poll", {}, max_attempts=max_attempts)
    child = _spawn(HOLDER, path)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == job_id, child.stderr.read() if child.stderr else line
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=GUARD)
    assert child.returncode == -signal.SIGKILL
    with open_state(path) as db:
        job = db.jobs.get(job_id)
        assert job is not None and job.status == "running" and job.attempt == 1
        assert db.jobs.recover_after_crash(time.time()) == [(job_id, expected)]
        job = db.jobs.get(job_id)
        assert job is not None and job.status == expected and job.attempt == 1
        assert [t.reason for t in db.jobs.transitions(job_id)] == ["enqueued", "claimed", "recovered_after_crash"]
        assert [a.outcome for a in db.jobs.attempts(job_id)] == ["crashed"]
        again = db.jobs.claim_next(time.time() + 3600)
        if expected == "queued":
            assert again is not None and again.id == job_id and again.attempt == 2
        else:
            assert again is None


MID_TRANSACTION = textwrap.dedent("""
    import sys, time
    from ductile.state import open_state
    db = open_state(sys.argv[1])
    with db.write():
        job = db.jobs.claim_next(time.time() + 3600)
        db.events.record_event("never.committed", {})
        print(job.id, flush=True)   # claimed inside an open transaction, write lock held
        time.sleep(3600)
""")


def test_kill_9_inside_a_transaction_leaves_the_state_before_it(tmp_path: Path) -> None:
    path = str(tmp_path / "ductile.db")
    with open_state(path) as db:
        job_id = db.jobs.enqueue("echo", "poll", {}, max_attempts=2)
    child = _spawn(MID_TRANSACTION, path)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == job_id
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=GUARD)
    with open_state(path) as db:
        job = db.jobs.get(job_id)
        assert job is not None and job.status == "queued" and job.attempt == 0
        assert db.jobs.recover_after_crash(time.time()) == []
        assert db.events.list_events() == []
        assert [t.reason for t in db.jobs.transitions(job_id)] == ["enqueued"]
        claimed = db.jobs.claim_next(time.time() + 3600)  # the dead writer's lock is gone
        assert claimed is not None and claimed.id == job_id and claimed.attempt == 1
