"""A model-checked job queue: hypothesis drives enqueue/claim/finish/requeue/recover against
the real SQLite store and a tiny in-memory model, and checks the ledger's invariants after
every step."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from ductile.state import open_state
from ductile.state.jobs import STATUSES, Dead, Deferred, Failed, JobQueue, Outcome, Retry, Succeeded, TimedOut

PLUGINS = ("alpha", "beta", "serial")
LIMITS = {"serial": 1}
T0 = 1_700_000_000.0


@dataclass
class Model:
    seq: int
    plugin: str
    status: str
    attempt: int
    max_attempts: int
    due: float


outcomes = st.one_of(
    st.builds(Succeeded, st.none() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    st.builds(Retry, st.just("flaky"), st.floats(0, 100).map(lambda d: T0 + d)),
    st.builds(Failed, st.just("no"), st.sampled_from(["exit_code_78", "plugin_retry_false"])),
    st.builds(TimedOut, st.just("slow"), st.none() | st.floats(0, 100).map(lambda d: T0 + d)),
    st.builds(Dead, st.just("gone")),
    st.builds(Deferred, st.just("key unreadable"), st.floats(0, 100).map(lambda d: T0 + d)),
)


def expected_after(outcome: Outcome, m: Model) -> tuple[str, float]:
    exhausted = m.attempt >= m.max_attempts
    if isinstance(outcome, Succeeded):
        return "succeeded", m.due
    if isinstance(outcome, Retry):
        return ("dead", m.due) if exhausted else ("queued", outcome.next_attempt_at)
    if isinstance(outcome, Failed):
        return "failed", m.due
    if isinstance(outcome, TimedOut):
        if outcome.retry_at is None:
            return "timed_out", m.due
        return ("dead", m.due) if exhausted else ("queued", outcome.retry_at)
    if isinstance(outcome, Deferred):
        return "queued", outcome.next_attempt_at  # never dead: the attempt is not charged
    return "dead", m.due


class QueueMachine(RuleBasedStateMachine):
    running = Bundle("running")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ductile-sm-")
        self.db = open_state(f"{self.dir}/ductile.db")
        self.now = T0
        self.q = JobQueue(self.db, clock=lambda: self.now)
        self.model: dict[str, Model] = {}
        self.succeeded: set[str] = set()
        self.seq = 0

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(plugin=st.sampled_from(PLUGINS), max_attempts=st.integers(1, 3), delay=st.sampled_from([None, 0.0, 50.0]))
    def enqueue(self, plugin: str, max_attempts: int, delay: float | None) -> None:
        not_before = None if delay is None else self.now + delay
        job_id = self.q.enqueue(plugin, "poll", {"seq": self.seq}, max_attempts=max_attempts, not_before=not_before)
        self.model[job_id] = Model(self.seq, plugin, "queued", 0, max_attempts,
                                   self.now if not_before is None else not_before)
        self.seq += 1

    @rule(target=running)
    def claim(self) -> str:
        busy = {p: sum(1 for m in self.model.values() if m.plugin == p and m.status == "running") for p in PLUGINS}
        # the job due the longest goes first; among jobs due at the same instant, the older one
        eligible = [(m.due, m.seq, jid) for jid, m in self.model.items()
                    if m.status == "queued" and m.due <= self.now and busy[m.plugin] < LIMITS.get(m.plugin, 99)]
        job = self.q.claim_next(self.now, running_limits=LIMITS)
        if not eligible:
            assert job is None
            return "none"  # hypothesis needs a value; finish/requeue ignore it
        expected = min(eligible)[2]
        assert job is not None and job.id == expected
        assert job.id not in self.succeeded
        m = self.model[job.id]
        m.status, m.attempt = "running", m.attempt + 1
        assert job.attempt == m.attempt
        return job.id

    @rule(job_id=consumes(running), outcome=outcomes)
    def finish(self, job_id: str, outcome: Outcome) -> None:
        if job_id not in self.model or self.model[job_id].status != "running":
            return
        m = self.model[job_id]
        status, due = expected_after(outcome, m)
        assert self.q.finish(job_id, outcome) == status
        m.status, m.due = status, due
        if isinstance(outcome, Deferred):
            m.attempt -= 1
        if status == "succeeded":
            self.succeeded.add(job_id)

    @rule(job_id=consumes(running))
    def requeue(self, job_id: str) -> None:
        if job_id not in self.model or self.model[job_id].status != "running":
            return
        self.q.requeue_running(job_id, "shutdown")
        m = self.model[job_id]
        m.status, m.attempt, m.due = "queued", m.attempt - 1, self.now

    @rule()
    def crash_and_recover(self) -> None:
        expected = {}
        for jid, m in self.model.items():
            if m.status == "running":
                expected[jid] = "queued" if m.attempt < m.max_attempts else "dead"
        got = self.q.recover_after_crash(self.now)
        assert dict(got) == expected and len(got) == len(expected)
        for jid, status in expected.items():
            self.model[jid].status, self.model[jid].due = status, self.now

    @rule(seconds=st.sampled_from([1.0, 30.0, 100.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: bool(self.model))
    @invariant()
    def ledger_matches_the_model(self) -> None:
        jobs = {j.id: j for j in self.q.list_jobs(limit=10_000)}
        assert set(jobs) == set(self.model)
        by_status = {s: {j.id for j in self.q.list_jobs(status=s, limit=10_000)} for s in STATUSES}
        for job_id, job in jobs.items():
            m = self.model[job_id]
            assert [s for s, ids in by_status.items() if job_id in ids] == [job.status]  # exactly one status
            assert (job.status, job.attempt) == (m.status, m.attempt)
            assert 0 <= job.attempt <= job.max_attempts
            if job.status == "queued":
                assert job.next_attempt_at == m.due
            path = self.q.transitions(job_id)
            assert path[0].from_status is None and path[0].to_status == "queued"
            assert path[-1].to_status == job.status  # the log ends at the current status
            for before, after in zip(path, path[1:]):
                assert after.from_status == before.to_status  # no gaps in the log
            attempts = self.q.attempts(job_id)
            assert sum(a.outcome == "running" for a in attempts) == (job.status == "running")
        assert self.q.queue_depth() == len(by_status["queued"])
        assert self.succeeded <= by_status["succeeded"]


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_job_queue_state_machine = QueueMachine.TestCase
