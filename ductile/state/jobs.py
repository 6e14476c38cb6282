"""The durable job queue: enqueue, claim, finish, requeue, recover — one transaction each.

States (ARCHITECTURE "Job states")::

    queued -> running -> succeeded | failed | timed_out | dead
                 \\-> queued (retryable failure, with next_attempt_at)

Every change writes the job row, its ``job_transitions`` row and (for a run) its
``job_attempts`` row in one transaction, so a ``kill -9`` anywhere leaves either the
state before or the state after — and a job left ``running`` by a crash is found and
settled by ``recover_after_crash`` at the next boot. Nothing is silently lost.

The queue, not its callers, keeps ``attempt <= max_attempts``: a retry asked for after
the last attempt becomes ``dead`` (reason ``attempts_exhausted``); the schema checks it too.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ductile.errors import StateError
from ductile.state.codec import clip, from_json, iso, tail_text, to_json
from ductile.state.db import StateDB
from ductile.state.schema import JOB_STATUSES

STATUSES = JOB_STATUSES
TERMINAL = frozenset({"succeeded", "failed", "timed_out", "dead"})
ERROR_MAX = 4096  # characters of an error message kept on the job and attempt rows

RunningLimits = Mapping[str, int] | Callable[[str], "int | None"]


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``, decoded. Times are epoch seconds; ``as_dict`` renders ISO-8601."""

    id: str
    plugin: str
    command: str
    payload: Any
    event: Any
    status: str
    attempt: int
    max_attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    result: Any
    last_error: str | None
    stderr_tail: str | None
    dedupe_key: str | None
    parent_job_id: str | None
    event_depth: int
    account: str | None
    uid: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = {k: row[k] for k in row.keys()}
        for key in ("payload", "event", "result"):
            data[key] = from_json(data[key])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for key in ("next_attempt_at", "created_at", "updated_at", "started_at", "finished_at"):
            out[key] = iso(out[key])
        return out


@dataclass(frozen=True)
class Attempt:
    """One run of a job: who it ran as, how it ended."""

    job_id: str
    attempt: int
    started_at: float
    finished_at: float | None
    outcome: str  # running | succeeded | retry | failed | timed_out | dead | crashed | interrupted
    exit_code: int | None
    error: str | None
    account: str | None
    uid: int | None
    stderr_tail: str | None

    def as_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["started_at"], out["finished_at"] = iso(self.started_at), iso(self.finished_at)
        return out


@dataclass(frozen=True)
class Transition:
    job_id: str
    from_status: str | None  # None for the enqueue that created the job
    to_status: str
    at: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.from_status, "to": self.to_status, "at": iso(self.at), "reason": self.reason}


# -- outcomes: what the dispatcher decided about one run ---------------------------------


@dataclass(frozen=True)
class Succeeded:
    result: Any = None
    kind: ClassVar[str] = "succeeded"


@dataclass(frozen=True)
class Retry:
    """A retryable failure; ``next_attempt_at`` from ``backoff``. Dead if no attempt is left."""

    error: str
    next_attempt_at: float
    kind: ClassVar[str] = "retry"


@dataclass(frozen=True)
class Failed:
    """A terminal failure; ``reason`` names the rule (``exit_code_78``, ``plugin_retry_false``...)."""

    error: str
    reason: str
    kind: ClassVar[str] = "failed"


@dataclass(frozen=True)
class TimedOut:
    """Killed at its deadline; retried at ``retry_at`` when given and attempts remain."""

    error: str
    retry_at: float | None = None
    kind: ClassVar[str] = "timed_out"


@dataclass(frozen=True)
class Dead:
    error: str
    reason: str = "attempts_exhausted"
    kind: ClassVar[str] = "dead"


Outcome = Succeeded | Retry | Failed | TimedOut | Dead


def backoff(attempt: int, base: float, maximum: float, rand: float) -> float:
    """Seconds before retry ``attempt`` + 1: ``base * 2**(attempt-1)`` capped at ``maximum``,
    plus jitter ``rand * base / 4`` (``rand`` in [0, 1], injected so this stays pure).

    Jitter spreads retries of jobs that failed together (an upstream outage) so they do
    not hammer it again in lockstep.
    """
    if base < 0 or maximum < 0:
        raise ValueError("backoff base and maximum must not be negative")
    exponent = min(max(attempt, 1) - 1, 1023)  # 2.0**1024 overflows; the cap has won long before
    delay = min(maximum, base * float(2**exponent))
    return delay + min(max(rand, 0.0), 1.0) * base / 4


def _not_found(job_id: str) -> StateError:
    return StateError("no such job", where=f"job {job_id}", fix="`ductile job list` shows the job ids")


class JobQueue:
    """The queue over one ``StateDB``. ``clock`` supplies "now" when a call does not."""

    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- writes ------------------------------------------------------------------------

    def enqueue(self, plugin: str, command: str, payload: Any, *, event: Any = None, max_attempts: int,
                parent_job_id: str | None = None, event_depth: int = 0, dedupe_key: str | None = None,
                not_before: float | None = None, now: float | None = None) -> str:
        """Queue a job and return its id; a known ``dedupe_key`` returns the existing job's id."""
        for name, value in (("plugin", plugin), ("command", command)):
            if not isinstance(value, str) or not value:
                raise StateError(f"{name} must be a non-empty string, got {value!r}", where=f"enqueue.{name}",
                                 fix=f"pass the {name} name")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise StateError(f"max_attempts must be an integer >= 1, got {max_attempts!r}",
                             where="enqueue.max_attempts", fix="pass the plugin's retry.max_attempts")
        if not isinstance(event_depth, int) or event_depth < 0:
            raise StateError(f"event_depth must be an integer >= 0, got {event_depth!r}",
                             where="enqueue.event_depth", fix="pass the depth of the event chain (0 for a root job)")
        now = self.clock() if now is None else now
        payload_text = to_json(payload, field="payload")
        event_text = None if event is None else to_json(event, field="event")
        with self.db.write() as conn:
            if dedupe_key is not None:
                found = conn.execute("SELECT id FROM jobs WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
                if found is not None:
                    return str(found["id"])
            if parent_job_id is not None and conn.execute(
                    "SELECT 1 FROM jobs WHERE id = ?", (parent_job_id,)).fetchone() is None:
                raise StateError("parent job does not exist", where=f"enqueue.parent_job_id {parent_job_id}",
                                 fix="pass the id of the job whose event started this one")
            job_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO jobs (id, plugin, command, payload, event, status, attempt, max_attempts,"
                " next_attempt_at, created_at, updated_at, dedupe_key, parent_job_id, event_depth)"
                " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, plugin, command, payload_text, event_text, max_attempts,
                 now if not_before is None else not_before, now, now, dedupe_key, parent_job_id, event_depth))
            self._transition(conn, job_id, None, "queued", now, "enqueued")
            return job_id

    def claim_next(self, now: float, *, running_limits: RunningLimits | None = None,
                   exclude_plugins: Iterable[str] = ()) -> Job | None:
        """Mark the oldest due queued job ``running`` (attempt + 1) and return it, or None.

        ``running_limits`` caps how many jobs of a plugin may run at once (a mapping, or a
        function returning the cap or None for no cap); a plugin at its cap is skipped so
        younger jobs of other plugins still run. ``BEGIN IMMEDIATE`` makes the choice and the
        update one step: two claimers, in threads or processes, never get the same job.
        """
        limit_of = _limit_lookup(running_limits)
        with self.db.write() as conn:
            running = {str(r[0]): int(r[1]) for r in conn.execute(
                "SELECT plugin, count(*) FROM jobs WHERE status = 'running' GROUP BY plugin")}
            blocked = set(exclude_plugins)
            blocked.update(p for p, n in running.items() if _at_cap(limit_of(p), n))
            while True:
                marks = ",".join("?" * len(blocked))
                row = conn.execute(
                    "SELECT id, plugin FROM jobs WHERE status = 'queued' AND next_attempt_at <= ?"
                    + (f" AND plugin NOT IN ({marks})" if blocked else "")
                    + " ORDER BY created_at, rowid LIMIT 1", (now, *sorted(blocked))).fetchone()
                if row is None:
                    return None
                if not _at_cap(limit_of(row["plugin"]), running.get(row["plugin"], 0)):
                    break
                blocked.add(row["plugin"])  # a cap of 0 for a plugin with nothing running
            job_id = str(row["id"])
            conn.execute("UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?,"
                         " finished_at = NULL, updated_at = ? WHERE id = ?", (now, now, job_id))
            attempt = conn.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            conn.execute("INSERT INTO job_attempts (job_id, attempt, started_at, outcome)"
                         " VALUES (?, ?, ?, 'running')", (job_id, attempt, now))
            self._transition(conn, job_id, "queued", "running", now, "claimed")
            return self._get(conn, job_id)

    def finish(self, job_id: str, outcome: Outcome, *, exit_code: int | None = None, account: str | None = None,
               uid: int | None = None, stderr_tail: str | bytes | None = None, now: float | None = None) -> str:
        """Record how a running job's attempt ended and return the job's new status."""
        now = self.clock() if now is None else now
        result_text = to_json(outcome.result, field="result") if isinstance(outcome, Succeeded) else None
        error = None if isinstance(outcome, Succeeded) else clip(outcome.error, ERROR_MAX)
        tail = tail_text(stderr_tail)
        with self.db.write() as conn:
            job = self._running(conn, job_id, "finish")
            status, reason, next_at = _settle(outcome, job)
            conn.execute(
                "UPDATE jobs SET status = ?, updated_at = ?, finished_at = ?, next_attempt_at = ?, result = ?,"
                " last_error = ?, stderr_tail = ?, account = ?, uid = ? WHERE id = ?",
                (status, now, None if status == "queued" else now, next_at, result_text, error, tail,
                 account, uid, job_id))
            self._close_attempt(conn, job, now, outcome.kind, error, exit_code=exit_code, account=account,
                                uid=uid, stderr_tail=tail)
            self._transition(conn, job_id, "running", status, now, reason)
            return status

    def requeue_running(self, job_id: str, reason: str, *, now: float | None = None) -> None:
        """Put back a running job that the gateway itself stopped (shutdown), without
        charging the attempt: the plugin did nothing wrong."""
        now = self.clock() if now is None else now
        with self.db.write() as conn:
            job = self._running(conn, job_id, "requeue")
            conn.execute("UPDATE jobs SET status = 'queued', attempt = attempt - 1, next_attempt_at = ?,"
                         " started_at = NULL, updated_at = ? WHERE id = ?", (now, now, job_id))
            self._close_attempt(conn, job, now, "interrupted", reason)
            self._transition(conn, job_id, "running", "queued", now, reason)

    def recover_after_crash(self, now: float | None = None) -> list[tuple[str, str]]:
        """Settle every job a dead gateway left ``running``: re-queue it if attempts remain
        (the interrupted attempt counts, it may have had effects), else mark it dead.

        Call only at boot, before any dispatcher of this database runs: a live worker's
        job is indistinguishable from an orphan here.
        """
        now = self.clock() if now is None else now
        error = "the gateway stopped while this job was running (crash, kill or power loss)"
        settled: list[tuple[str, str]] = []
        with self.db.write() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status = 'running' ORDER BY started_at, rowid").fetchall()
            for row in rows:
                job = Job.from_row(row)
                status = "queued" if job.attempt < job.max_attempts else "dead"
                conn.execute("UPDATE jobs SET status = ?, next_attempt_at = ?, finished_at = ?, last_error = ?,"
                             " updated_at = ? WHERE id = ?",
                             (status, now, None if status == "queued" else now, error, now, job.id))
                self._close_attempt(conn, job, now, "crashed", error)
                self._transition(conn, job.id, "running", status, now, "recovered_after_crash")
                settled.append((job.id, status))
        return settled

    # -- reads -------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.db.read() as conn:
            return self._get(conn, job_id)

    def resolve(self, id_or_prefix: str) -> Job | None:
        """The job with this id, or the only job whose id starts with it (as git does)."""
        with self.db.read() as conn:
            exact = self._get(conn, id_or_prefix)
            if exact is not None or not id_or_prefix:
                return exact
            rows = conn.execute("SELECT * FROM jobs WHERE substr(id, 1, ?) = ? LIMIT 2",
                                (len(id_or_prefix), id_or_prefix)).fetchall()
        if len(rows) > 1:
            raise StateError("more than one job id starts with this", where=f"job {id_or_prefix}",
                             fix="give more characters of the id")
        return Job.from_row(rows[0]) if rows else None

    def list_jobs(self, status: str | None = None, plugin: str | None = None, limit: int = 50, *,
                  plugins: Iterable[str] | None = None) -> list[Job]:
        """Newest first. ``plugins`` restricts to a set of plugins (an API token's scopes)."""
        if status is not None and status not in STATUSES:
            raise StateError(f"unknown job status {status!r}", where="status",
                             fix=f"use one of {', '.join(STATUSES)}")
        clauses: list[str] = []
        args: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if plugin is not None:
            clauses.append("plugin = ?")
            args.append(plugin)
        if plugins is not None:
            allowed = sorted(set(plugins))
            if not allowed:
                return []
            clauses.append(f"plugin IN ({','.join('?' * len(allowed))})")
            args.extend(allowed)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT * FROM jobs{where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                (*args, max(0, limit))).fetchall()
        return [Job.from_row(r) for r in rows]

    def queue_depth(self) -> int:
        """Jobs waiting to run, including retries not yet due."""
        with self.db.read() as conn:
            return int(conn.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0])

    def last_finished(self) -> Job | None:
        """The job that reached a final status most recently (``system status``)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE finished_at IS NOT NULL"
                               " ORDER BY finished_at DESC, rowid DESC LIMIT 1").fetchone()
        return Job.from_row(row) if row is not None else None

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT job_id, attempt, started_at, finished_at, outcome, exit_code, error,"
                                " account, uid, stderr_tail FROM job_attempts WHERE job_id = ? ORDER BY id",
                                (job_id,)).fetchall()
        return [Attempt(**{k: r[k] for k in r.keys()}) for r in rows]

    def transitions(self, job_id: str) -> list[Transition]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT job_id, from_status, to_status, at, reason FROM job_transitions"
                                " WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        return [Transition(**{k: r[k] for k in r.keys()}) for r in rows]

    # -- helpers (inside a transaction) ------------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def _running(self, conn: sqlite3.Connection, job_id: str, verb: str) -> Job:
        job = self._get(conn, job_id)
        if job is None:
            raise _not_found(job_id)
        if job.status != "running":
            raise StateError(f"cannot {verb} a job that is {job.status}, not running; nothing recorded",
                             where=f"job {job_id}",
                             fix="only the worker that claimed a job may settle it; check for a second gateway "
                                 "on the same state database")
        return job

    @staticmethod
    def _transition(conn: sqlite3.Connection, job_id: str, from_status: str | None, to_status: str,
                    at: float, reason: str) -> None:
        conn.execute("INSERT INTO job_transitions (job_id, from_status, to_status, at, reason)"
                     " VALUES (?, ?, ?, ?, ?)", (job_id, from_status, to_status, at, reason))

    @staticmethod
    def _close_attempt(conn: sqlite3.Connection, job: Job, now: float, outcome: str, error: str | None, *,
                       exit_code: int | None = None, account: str | None = None, uid: int | None = None,
                       stderr_tail: str | None = None) -> None:
        """Complete the open attempt row that ``claim_next`` wrote for this run."""
        values = (now, outcome, exit_code, error, account, uid, stderr_tail)
        updated = conn.execute(
            "UPDATE job_attempts SET finished_at = ?, outcome = ?, exit_code = ?, error = ?, account = ?,"
            " uid = ?, stderr_tail = ? WHERE id = (SELECT max(id) FROM job_attempts WHERE job_id = ?"
            " AND finished_at IS NULL)", (*values, job.id)).rowcount
        if not updated:  # a row from before attempts were opened at claim; keep the record anyway
            conn.execute("INSERT INTO job_attempts (job_id, attempt, started_at, finished_at, outcome, exit_code,"
                         " error, account, uid, stderr_tail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (job.id, job.attempt, job.started_at or now, *values))


def _settle(outcome: Outcome, job: Job) -> tuple[str, str, float]:
    """(new status, transition reason, next_attempt_at) for an outcome of ``job``'s run."""
    exhausted = job.attempt >= job.max_attempts
    keep = job.next_attempt_at
    if isinstance(outcome, Succeeded):
        return "succeeded", "succeeded", keep
    if isinstance(outcome, Retry):
        if exhausted:
            return "dead", "attempts_exhausted", keep
        return "queued", "retry_scheduled", outcome.next_attempt_at
    if isinstance(outcome, Failed):
        return "failed", outcome.reason, keep
    if isinstance(outcome, TimedOut):
        if outcome.retry_at is None:
            return "timed_out", "timeout", keep
        if exhausted:
            return "dead", "attempts_exhausted", keep
        return "queued", "timeout_retry_scheduled", outcome.retry_at
    if isinstance(outcome, Dead):
        return "dead", outcome.reason, keep
    raise TypeError(f"not a job outcome: {outcome!r}")


def _limit_lookup(limits: RunningLimits | None) -> Callable[[str], int | None]:
    if limits is None:
        return lambda _plugin: None
    if callable(limits):
        return limits
    return limits.get


def _at_cap(limit: int | None, running: int) -> bool:
    return limit is not None and running >= limit
