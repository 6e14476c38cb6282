"""The job queue in one process: enqueue, claim, caps, outcomes, transitions, recovery, backoff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ductile.errors import StateError
from ductile.state import StateDB, open_state
from ductile.state.jobs import (STATUSES, Dead, Failed, JobQueue, Outcome, Retry, Succeeded, TimedOut,
                                backoff)

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StateDB]:
    with open_state(str(tmp_path / "ductile.db")) as state:
        yield state


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def q(db: StateDB, clock: Clock) -> JobQueue:
    return JobQueue(db, clock=clock)


def _path(q: JobQueue, job_id: str) -> list[tuple[str | None, str, str]]:
    return [(t.from_status, t.to_status, t.reason) for t in q.transitions(job_id)]


def test_enqueue_then_claim_then_succeed(q: JobQueue) -> None:
    job_id = q.enqueue("echo", "poll", {"message": "hi"}, max_attempts=3, event={"type": "x"})
    job = q.get(job_id)
    assert job is not None and job.status == "queued" and job.attempt == 0 and job.created_at == T0
    claimed = q.claim_next(T0)
    assert claimed is not None and claimed.id == job_id and claimed.status == "running" and claimed.attempt == 1
    assert claimed.payload == {"message": "hi"} and claimed.event == {"type": "x"}
    assert q.finish(job_id, Succeeded({"ok": True}), exit_code=0, account="default", uid=1001,
                    stderr_tail="note\n") == "succeeded"
    done = q.get(job_id)
    assert done is not None and done.result == {"ok": True} and done.finished_at == T0
    assert (done.account, done.uid, done.stderr_tail) == ("default", 1001, "note\n")
    [attempt] = q.attempts(job_id)
    assert (attempt.attempt, attempt.outcome, attempt.exit_code, attempt.account, attempt.uid) == (
        1, "succeeded", 0, "default", 1001)
    assert _path(q, job_id) == [(None, "queued", "enqueued"), ("queued", "running", "claimed"),
                                ("running", "succeeded", "succeeded")]
    assert q.claim_next(T0 + 10_000) is None


@pytest.mark.parametrize(("outcome", "attempt", "max_attempts", "status", "reason"), [
    (Succeeded(None), 1, 3, "succeeded", "succeeded"),
    (Retry("flaky", T0 + 30), 1, 3, "queued", "retry_scheduled"),
    (Retry("flaky", T0 + 30), 3, 3, "dead", "attempts_exhausted"),
    (Failed("exit 78", "exit_code_78"), 1, 3, "failed", "exit_code_78"),
    (Failed("said no", "plugin_retry_false"), 1, 3, "failed", "plugin_retry_false"),
    (TimedOut("too slow"), 1, 3, "timed_out", "timeout"),
    (TimedOut("too slow", retry_at=T0 + 30), 1, 3, "queued", "timeout_retry_scheduled"),
    (TimedOut("too slow", retry_at=T0 + 30), 2, 2, "dead", "attempts_exhausted"),
    (Dead("gave up"), 1, 3, "dead", "attempts_exhausted"),
    (Dead("refused drop", reason="drop_failed"), 1, 3, "dead", "drop_failed"),
])
def test_outcome_table(q: JobQueue, outcome: Outcome, attempt: int, max_attempts: int, status: str,
                       reason: str) -> None:
    job_id = q.enqueue("echo", "poll", {}, max_attempts=max_attempts)
    for _ in range(attempt - 1):  # earlier attempts fail retryably, due at once
        assert q.claim_next(T0) is not None
        assert q.finish(job_id, Retry("earlier", T0)) == "queued"
    claimed = q.claim_next(T0)
    assert claimed is not None and claimed.attempt == attempt
    assert q.finish(job_id, outcome) == status
    job = q.get(job_id)
    assert job is not None and job.status == status and job.attempt == attempt
    assert _path(q, job_id)[-1] == ("running", status, reason)
    assert q.attempts(job_id)[-1].outcome == outcome.kind
    if status == "queued":
        assert job.next_attempt_at == T0 + 30 and job.finished_at is None
        assert q.claim_next(T0 + 29) is None
        assert q.claim_next(T0 + 30) is not None
    else:
        assert job.finished_at is not None
        assert q.claim_next(T0 + 1e6) is None
    assert job.last_error == (None if status == "succeeded" else outcome.error)  # type: ignore[union-attr]


def test_not_before_delays_the_first_attempt(q: JobQueue) -> None:
    q.enqueue("echo", "poll", {}, max_attempts=1, not_before=T0 + 60)
    assert q.claim_next(T0 + 59) is None
    assert q.claim_next(T0 + 60) is not None


def test_oldest_eligible_job_first(q: JobQueue, clock: Clock) -> None:
    ids = []
    for i in range(3):
        clock.now = T0 + i
        ids.append(q.enqueue("echo", "poll", {"i": i}, max_attempts=1))
    clock.now = T0 + 3
    later = q.enqueue("echo", "poll", {}, max_attempts=1, not_before=T0 + 100)
    claimed = [q.claim_next(T0 + 10) for _ in range(4)]
    assert [c.id if c else None for c in claimed] == [*ids, None]
    assert q.claim_next(T0 + 100) is not None and q.get(later).status == "running"  # type: ignore[union-attr]


def test_dedupe_key_returns_the_existing_job(q: JobQueue) -> None:
    first = q.enqueue("echo", "poll", {"a": 1}, max_attempts=1, dedupe_key="echo:poll:07:00")
    again = q.enqueue("echo", "poll", {"a": 2}, max_attempts=1, dedupe_key="echo:poll:07:00")
    other = q.enqueue("echo", "poll", {}, max_attempts=1, dedupe_key="echo:poll:08:00")
    none1 = q.enqueue("echo", "poll", {}, max_attempts=1)
    none2 = q.enqueue("echo", "poll", {}, max_attempts=1)
    assert first == again and len({first, other, none1, none2}) == 4
    assert q.queue_depth() == 4
    assert q.get(first).payload == {"a": 1}  # type: ignore[union-attr]
    assert len(q.transitions(first)) == 1
    # still deduplicated once the first run is over
    assert q.claim_next(T0) is not None
    q.finish(first, Succeeded())
    assert q.enqueue("echo", "poll", {}, max_attempts=1, dedupe_key="echo:poll:07:00") == first


def test_per_plugin_cap_skips_to_other_plugins(q: JobQueue, clock: Clock) -> None:
    a = [q.enqueue("serial", "poll", {"i": i}, max_attempts=1) for i in range(3)]
    b = [q.enqueue("parallel", "poll", {"i": i}, max_attempts=1) for i in range(2)]
    limits = {"serial": 1}
    order = [q.claim_next(T0, running_limits=limits) for _ in range(4)]
    assert [j.id if j else None for j in order] == [a[0], b[0], b[1], None]
    q.finish(a[0], Succeeded())
    nxt = q.claim_next(T0, running_limits=limits)
    assert nxt is not None and nxt.id == a[1]
    assert q.claim_next(T0, running_limits=limits) is None


def test_cap_as_a_function_and_a_cap_of_zero(q: JobQueue) -> None:
    q.enqueue("paused", "poll", {}, max_attempts=1)
    two = [q.enqueue("pair", "poll", {}, max_attempts=1) for _ in range(3)]
    caps = {"paused": 0, "pair": 2}
    got = [q.claim_next(T0, running_limits=caps.get) for _ in range(3)]
    assert [j.id if j else None for j in got] == [two[0], two[1], None]


def test_excluded_plugins_are_not_claimed(q: JobQueue) -> None:
    q.enqueue("draining", "poll", {}, max_attempts=1)
    keep = q.enqueue("echo", "poll", {}, max_attempts=1)
    got = q.claim_next(T0, exclude_plugins=["draining"])
    assert got is not None and got.id == keep
    assert q.claim_next(T0, exclude_plugins={"draining"}) is None


def test_requeue_running_does_not_charge_an_attempt(q: JobQueue) -> None:
    job_id = q.enqueue("echo", "poll", {}, max_attempts=1)
    assert q.claim_next(T0) is not None
    q.requeue_running(job_id, "shutdown")
    job = q.get(job_id)
    assert job is not None and job.status == "queued" and job.attempt == 0
    again = q.claim_next(T0)
    assert again is not None and again.attempt == 1
    assert [a.outcome for a in q.attempts(job_id)] == ["interrupted", "running"]
    assert _path(q, job_id)[-2] == ("running", "queued", "shutdown")


@pytest.mark.parametrize(("max_attempts", "status"), [(2, "queued"), (1, "dead")])
def test_recover_after_crash_in_process(q: JobQueue, max_attempts: int, status: str) -> None:
    job_id = q.enqueue("echo", "poll", {}, max_attempts=max_attempts)
    untouched = q.enqueue("echo", "poll", {}, max_attempts=1, not_before=T0 + 100)
    assert q.claim_next(T0) is not None
    assert q.recover_after_crash(T0 + 5) == [(job_id, status)]
    job = q.get(job_id)
    assert job is not None and job.status == status and job.attempt == 1
    assert job.last_error and "stopped" in job.last_error
    assert _path(q, job_id)[-1] == ("running", status, "recovered_after_crash")
    assert q.attempts(job_id)[-1].outcome == "crashed"
    assert q.get(untouched).status == "queued"  # type: ignore[union-attr]
    assert q.recover_after_crash(T0 + 6) == []


def test_settling_a_job_that_is_not_running_is_refused(q: JobQueue) -> None:
    job_id = q.enqueue("echo", "poll", {}, max_attempts=1)
    with pytest.raises(StateError, match="queued, not running"):
        q.finish(job_id, Succeeded())
    with pytest.raises(StateError, match="not running"):
        q.requeue_running(job_id, "shutdown")
    with pytest.raises(StateError, match="no such job"):
        q.finish("no-such-id", Succeeded())
    assert _path(q, job_id) == [(None, "queued", "enqueued")]


def test_stderr_tail_is_bounded_and_keeps_the_end(q: JobQueue) -> None:
    job_id = q.enqueue("echo", "poll", {}, max_attempts=1)
    q.claim_next(T0)
    noise = b"\xff" * 10 + "é".encode() * 40_000 + b"THE END"
    q.finish(job_id, Failed("bad", "plugin_error"), stderr_tail=noise)
    tail = q.get(job_id).stderr_tail  # type: ignore[union-attr]
    assert tail is not None and tail.endswith("THE END") and len(tail.encode()) <= 64 * 1024
    assert "\ufffd" not in tail  # the cut did not split a character
    assert q.attempts(job_id)[0].stderr_tail == tail


def test_enqueue_refusals_name_the_field(q: JobQueue) -> None:
    for kwargs, field in [({"max_attempts": 0}, "max_attempts"),
                          ({"max_attempts": 1, "event_depth": -1}, "event_depth"),
                          ({"max_attempts": 1, "parent_job_id": "ghost"}, "parent_job_id")]:
        with pytest.raises(StateError) as info:
            q.enqueue("echo", "poll", {}, **kwargs)  # type: ignore[arg-type]
        assert field in info.value.one_line() and "fix:" in info.value.one_line()
    with pytest.raises(StateError, match="payload"):
        q.enqueue("echo", "poll", {"x": object()}, max_attempts=1)
    with pytest.raises(StateError, match="plugin"):
        q.enqueue("", "poll", {}, max_attempts=1)
    assert q.queue_depth() == 0


def test_child_jobs_keep_their_lineage(q: JobQueue) -> None:
    parent = q.enqueue("echo", "poll", {}, max_attempts=1)
    child = q.enqueue("notify", "handle", {}, max_attempts=1, parent_job_id=parent, event_depth=1,
                      event={"type": "echo.done", "payload": {}})
    job = q.get(child)
    assert job is not None and job.parent_job_id == parent and job.event_depth == 1


def test_queries(q: JobQueue, clock: Clock) -> None:
    ids = []
    for i, plugin in enumerate(["a", "b", "a"]):
        clock.now = T0 + i
        ids.append(q.enqueue(plugin, "poll", {}, max_attempts=1))
    q.claim_next(T0 + 10)
    assert [j.id for j in q.list_jobs()] == ids[::-1]
    assert [j.id for j in q.list_jobs(plugin="a")] == [ids[2], ids[0]]
    assert [j.id for j in q.list_jobs(status="running")] == [ids[0]]
    assert [j.id for j in q.list_jobs(limit=1)] == [ids[2]]
    assert q.queue_depth() == 2
    assert q.resolve(ids[1][:8]) is not None and q.resolve(ids[1]).id == ids[1]  # type: ignore[union-attr]
    assert q.resolve("zzzz") is None and q.get("zzzz") is None
    with pytest.raises(StateError, match="unknown job status"):
        q.list_jobs(status="exploded")
    assert set(q.get(ids[0]).as_dict()) >= {"id", "status", "attempt", "next_attempt_at"}  # type: ignore[union-attr]
    assert q.get(ids[0]).as_dict()["created_at"] == "2023-11-14T22:13:20.000Z"  # type: ignore[union-attr]
    assert set(STATUSES) == {"queued", "running", "succeeded", "failed", "timed_out", "dead"}


def test_ambiguous_prefix_is_refused(q: JobQueue) -> None:
    seen: dict[str, str] = {}
    while True:  # uuid4 ids: two sharing a first hex digit come within 17 tries
        job_id = q.enqueue("echo", "poll", {}, max_attempts=1)
        if job_id[0] in seen:
            break
        seen[job_id[0]] = job_id
    with pytest.raises(StateError, match="more than one"):
        q.resolve(job_id[0])


# -- backoff --------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "base", "maximum", "rand", "expected"), [
    (1, 30, 3600, 0.0, 30),
    (2, 30, 3600, 0.0, 60),
    (3, 30, 3600, 0.0, 120),
    (4, 30, 3600, 0.0, 240),
    (8, 30, 3600, 0.0, 3600),      # 3840 capped
    (1, 30, 3600, 1.0, 37.5),      # + base/4
    (3, 30, 3600, 0.5, 123.75),
    (8, 30, 3600, 1.0, 3607.5),    # jitter rides on top of the cap
    (10_000, 30, 3600, 0.0, 3600), # no overflow
    (0, 30, 3600, 0.0, 30),        # attempt below 1 treated as the first
    (1, 0, 3600, 0.7, 0),
    (5, 100, 50, 0.0, 50),         # maximum below base
])
def test_backoff_table(attempt: int, base: float, maximum: float, rand: float, expected: float) -> None:
    assert backoff(attempt, base, maximum, rand) == pytest.approx(expected)


def test_backoff_refuses_negative_settings() -> None:
    with pytest.raises(ValueError):
        backoff(1, -1, 10, 0)


settings_st = st.tuples(st.floats(0, 1e6), st.floats(0, 1e7))


@given(st.integers(-5, 5000), settings_st, st.floats(0, 1))
def test_backoff_bounds(attempt: int, settings: tuple[float, float], rand: float) -> None:
    base, maximum = settings
    delay = backoff(attempt, base, maximum, rand)
    assert 0 <= delay <= maximum + base / 4 + 1e-9 * max(1.0, maximum)


@given(st.integers(1, 2000), settings_st)
def test_backoff_is_monotone_before_jitter(attempt: int, settings: tuple[float, float]) -> None:
    base, maximum = settings
    assert backoff(attempt, base, maximum, 0.0) <= backoff(attempt + 1, base, maximum, 0.0)


@given(st.integers(1, 60), settings_st, st.floats(0, 1))
def test_backoff_jitter_is_at_most_a_quarter_base(attempt: int, settings: tuple[float, float], rand: float) -> None:
    base, maximum = settings
    extra = backoff(attempt, base, maximum, rand) - backoff(attempt, base, maximum, 0.0)
    assert -1e-9 <= extra <= base / 4 + 1e-6
