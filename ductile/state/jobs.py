"""The durable job queue: enqueue, claim, finish, requeue, recover — one transaction each.

States (ARCHITECTURE "Job states")::

    queued -> running -> succeeded | failed | timed_out | dead
                 \\-> queued (retryable failure, with next_attempt_at)
                 \\-> queued (deferred by a gateway fault or a shutdown: attempt not charged)

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
from ductile.redact import redact
from ductile.state.codec import clip, from_json, iso, tail_text, to_json
from ductile.state.db import StateDB
from ductile.state.schema import JOB_STATUSES

STATUSES = JOB_STATUSES
TERMINAL = frozenset({"succeeded", "failed", "timed_out", "dead"})
ERROR_MAX = 4096  # characters of an error message kept on the job and attempt rows

RunningLimits = Mapping[str, int] | Callable[[str], "int | None"]

# The distinct plugins that have queued jobs, by skipping from one to the next on the
# jobs_due index (a "loose index scan"): one seek per plugin, not one step per queued row.
# INDEXED BY makes the plan a guarantee: the planner may otherwise pick jobs_plugin_status
# and walk a plugin's whole history to find that it has nothing queued.
_QUEUED_PLUGINS = """
WITH RECURSIVE p(name) AS (
    SELECT (SELECT plugin FROM jobs INDEXED BY jobs_due WHERE status = 'queued' ORDER BY plugin LIMIT 1)
    UNION ALL
    SELECT (SELECT plugin FROM jobs INDEXED BY jobs_due WHERE status = 'queued' AND plugin > p.name
            ORDER BY plugin LIMIT 1)
    FROM p WHERE p.name IS NOT NULL
)
SELECT name FROM p WHERE name IS NOT NULL
"""
# Every read of whole job rows goes through this: the payload of a job started by an event
# lives in the event row (migration 4).
_SELECT = "SELECT jobs.*, events.payload AS event_payload FROM jobs LEFT JOIN events ON events.id = jobs.event_id"
_EARLIEST = ("SELECT next_attempt_at, rowid, id FROM jobs INDEXED BY jobs_due WHERE status = 'queued' AND plugin = ?"
             " ORDER BY next_attempt_at, rowid LIMIT 1")
_RUNNING = "SELECT plugin, count(*) FROM jobs INDEXED BY jobs_running WHERE status = 'running' GROUP BY plugin"


_TIMES = ("next_attempt_at", "created_at", "updated_at", "started_at", "finished_at")


@dataclass(frozen=True)
class JobHead:
    """What every view of a job shows: who, what, where it stands, when. Times are epoch
    seconds; ``as_dict`` renders them ISO-8601."""

    id: str
    plugin: str
    command: str
    status: str
    attempt: int
    max_attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    dedupe_key: str | None
    parent_job_id: str | None
    event_depth: int
    account: str | None
    uid: int | None
    last_error: str | None
    trigger: str | None  # api:<token>, webhook:<path>, schedule, cli, pipeline:<parent job id>

    def as_dict(self) -> dict[str, Any]:
        """The job as every reader sees it (API, ``job show``, ``job list``): times as
        ISO-8601, and values under secret-looking keys of its payload, event and result
        redacted by the one rule ``config show`` uses (``ductile.redact``). The row itself
        keeps them: the plugin needs its payload."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for key in _TIMES:
            out[key] = iso(out[key])
        for key in ("payload", "event", "result"):
            if key in out:
                out[key] = redact(out[key])
        return out


@dataclass(frozen=True)
class Job(JobHead):
    """One whole row of ``jobs``, decoded: with payload, event, result and stderr tail."""

    payload: Any
    event: Any
    result: Any
    stderr_tail: str | None
    event_id: str | None = None
    claimed_by: str | None = None  # a process outside serve running it (``plugin run``)
    warnings: list[str] | None = None  # what the gateway dropped from the last run's answer
    authority: dict[str, Any] | None = None  # the root trigger of the chain and its scopes

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        """Decode a row of ``_SELECT``: a job started by an event gets its payload (and the
        event's) from the event row, where it is stored once."""
        data = {k: row[k] for k in row.keys()}
        shared = data.pop("event_payload", None)
        for key in ("payload", "event", "result", "warnings", "authority"):
            data[key] = from_json(data[key])
        if data.get("event_id") is not None and shared is not None:
            payload = from_json(shared)
            data["payload"] = payload if isinstance(payload, dict) else {}
            data["event"] = {**(data["event"] or {}), "payload": payload}
        return cls(**data)


SUMMARY_ERROR_MAX = 200  # characters of last_error in a listing (the whole error is on the job)
_SUMMARY_COLUMNS = ", ".join(f"jobs.{f}" for f in JobHead.__dataclass_fields__ if f != "last_error") + \
    f", substr(jobs.last_error, 1, {SUMMARY_ERROR_MAX + 1}) AS last_error"


@dataclass(frozen=True)
class JobSummary(JobHead):
    """A job as a listing shows it: the head only, and the first ``SUMMARY_ERROR_MAX``
    characters of its last error (``GET /job/{id}`` and ``job show`` have the rest)."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobSummary:
        data = {k: row[k] for k in row.keys()}
        data["last_error"] = clip(data["last_error"], SUMMARY_ERROR_MAX)
        return cls(**data)


@dataclass(frozen=True)
class Attempt:
    """One run of a job: who it ran as, how it ended."""

    job_id: str
    attempt: int
    started_at: float
    finished_at: float | None
    outcome: str  # running | succeeded | retry | failed | timed_out | dead | deferred | crashed | interrupted
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


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: the job now running, or when the next queued job falls due."""

    job: Job | None
    next_due: float | None = None


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


@dataclass(frozen=True)
class Deferred:
    """The gateway could not start the run (a fault of its own): back to the queue at
    ``next_attempt_at`` without charging the attempt — the plugin never got its chance."""

    error: str
    next_attempt_at: float
    kind: ClassVar[str] = "deferred"


Outcome = Succeeded | Retry | Failed | TimedOut | Dead | Deferred


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


class PluginBusy(StateError):
    """A plugin at its concurrency cap: the jobs holding it, so the refusal can name them."""

    def __init__(self, plugin: str, limit: int, running: list[tuple[str, str | None]]) -> None:
        holders = ", ".join(f"{job_id} ({'by ' + by.split(' ', 1)[0] if by else 'by serve'})" for job_id, by in running)
        what = "one job at a time" if limit == 1 else f"{limit} jobs at a time"
        super().__init__(f"plugin {plugin} runs {what} and job {holders} is running it", where=f"plugins.{plugin}",
                         fix=f"wait for it to finish (ductile job show {running[0][0]}), then run it again",
                         cause="busy")
        self.running = running


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
                not_before: float | None = None, now: float | None = None, event_id: str | None = None,
                trigger: str | None = None, authority: Mapping[str, Any] | None = None) -> str:
        """Queue a job and return its id; a known ``dedupe_key`` returns the existing job's id.

        ``event_id`` names a stored event this job was started by: its payload is then not
        copied into the job (``payload`` and ``event["payload"]`` are read from the event).
        ``trigger`` says what started the job and ``authority`` what the root of its chain
        was allowed to do (see ``ductile.serve.authority``); both are kept for the ledger
        and for the pipeline steps the job's events start."""
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
        event_text: str | None
        if event_id is not None:
            payload_text = "null"
            envelope = {k: v for k, v in event.items() if k != "payload"} if isinstance(event, dict) else {}
            event_text = to_json(envelope, field="event")
        else:
            payload_text = to_json(payload, field="payload")
            event_text = None if event is None else to_json(event, field="event")
        authority_text = None if authority is None else to_json(dict(authority), field="authority")
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
                " next_attempt_at, created_at, updated_at, dedupe_key, parent_job_id, event_depth, event_id,"
                " trigger, authority) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, plugin, command, payload_text, event_text, max_attempts,
                 now if not_before is None else not_before, now, now, dedupe_key, parent_job_id, event_depth, event_id,
                 trigger, authority_text))
            self._transition(conn, job_id, None, "queued", now, "enqueued")
            return job_id

    def claim_next(self, now: float, *, running_limits: RunningLimits | None = None,
                   exclude_plugins: Iterable[str] = ()) -> Job | None:
        """Mark the queued job due the longest ``running`` (attempt + 1) and return it, or None.

        See ``claim``; this is the same without the next-due time.
        """
        return self.claim(now, running_limits=running_limits, exclude_plugins=exclude_plugins).job

    def claim(self, now: float, *, running_limits: RunningLimits | None = None,
              exclude_plugins: Iterable[str] = ()) -> Claim:
        """Claim the job that has been due the longest: earliest ``next_attempt_at``, then
        enqueue order. With nothing due, ``Claim.next_due`` says when the earliest queued job
        of a plugin with room falls due, so a worker can sleep until then instead of polling.

        ``running_limits`` caps how many jobs of a plugin may run at once (a mapping, or a
        function returning the cap or None for no cap); a plugin at its cap is skipped
        without reading its queued rows, so younger jobs of other plugins still run.
        ``BEGIN IMMEDIATE`` makes the choice and the update one step: two claimers, in
        threads or processes, never get the same job.

        Cost: one index seek per plugin that has queued jobs (``jobs_due``) and a count of
        running jobs (``jobs_running``) — independent of how deep the queue is.
        """
        limit_of = _limit_lookup(running_limits)
        blocked = set(exclude_plugins)
        with self.db.write() as conn:
            running = {str(r[0]): int(r[1]) for r in conn.execute(_RUNNING)}
            best: tuple[float, int, str] | None = None
            next_due: float | None = None
            for (plugin,) in conn.execute(_QUEUED_PLUGINS).fetchall():
                if plugin in blocked or _at_cap(limit_of(plugin), running.get(plugin, 0)):
                    continue
                row = conn.execute(_EARLIEST, (plugin,)).fetchone()
                if row is None:
                    continue
                due, rowid, job_id = float(row[0]), int(row[1]), str(row[2])
                if due > now:
                    next_due = due if next_due is None else min(next_due, due)
                elif best is None or (due, rowid) < best[:2]:
                    best = (due, rowid, job_id)
            if best is None:
                return Claim(None, next_due)
            job_id = best[2]
            conn.execute("UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?,"
                         " finished_at = NULL, updated_at = ? WHERE id = ?", (now, now, job_id))
            attempt = conn.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            conn.execute("INSERT INTO job_attempts (job_id, attempt, started_at, outcome)"
                         " VALUES (?, ?, ?, 'running')", (job_id, attempt, now))
            self._transition(conn, job_id, "queued", "running", now, "claimed")
            return Claim(self._get(conn, job_id), None)

    def start_now(self, plugin: str, command: str, payload: Any, *, limit: int | None, claimed_by: str,
                  now: float | None = None) -> Job:
        """Record a job that runs now, outside the queue (``plugin run``): one attempt, already
        ``running``, held by ``claimed_by``. Refused with ``PluginBusy`` — naming the running
        jobs — when the plugin is at its cap, counted together with serve's jobs in the same
        transaction, so the two can never run a one-at-a-time plugin side by side."""
        now = self.clock() if now is None else now
        payload_text = to_json(payload, field="payload")
        with self.db.write() as conn:
            if limit is not None:
                held = [(str(r[0]), r[1]) for r in conn.execute(
                    "SELECT id, claimed_by FROM jobs INDEXED BY jobs_running WHERE status = 'running' AND plugin = ?"
                    " ORDER BY started_at", (plugin,))]
                if len(held) >= limit:
                    raise PluginBusy(plugin, limit, held)
            job_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO jobs (id, plugin, command, payload, status, attempt, max_attempts, next_attempt_at,"
                " created_at, updated_at, started_at, claimed_by, trigger)"
                " VALUES (?, ?, ?, ?, 'running', 1, 1, ?, ?, ?, ?, ?, 'cli')",
                (job_id, plugin, command, payload_text, now, now, now, now, claimed_by))
            conn.execute("INSERT INTO job_attempts (job_id, attempt, started_at, outcome) VALUES (?, 1, ?, 'running')",
                         (job_id, now))
            self._transition(conn, job_id, None, "running", now, f"started by {claimed_by.split(' ', 1)[0]}")
            found = self._get(conn, job_id)
            assert found is not None
            return found

    def recover_orphans(self, alive: Callable[[str], bool], now: float | None = None) -> list[tuple[str, str]]:
        """Settle running jobs held by a process outside serve (``claimed_by``) that is gone:
        killed mid-run, its job would otherwise hold the plugin's cap until serve restarts."""
        now = self.clock() if now is None else now
        with self.db.write() as conn:
            rows = conn.execute(f"{_SELECT} WHERE jobs.status = 'running' AND jobs.claimed_by IS NOT NULL").fetchall()
            orphans = [Job.from_row(r) for r in rows if not alive(str(r["claimed_by"]))]
            return [self._crashed(conn, job, now, f"the process running it ({job.claimed_by}) is gone")
                    for job in orphans]

    def finish(self, job_id: str, outcome: Outcome, *, exit_code: int | None = None, account: str | None = None,
               uid: int | None = None, stderr_tail: str | bytes | None = None, now: float | None = None,
               warnings: Iterable[str] = ()) -> str:
        """Record how a running job's attempt ended and return the job's new status.

        ``warnings`` are what the gateway dropped from this run's answer (one line each);
        they replace the previous run's, so the row tells about the run it shows."""
        now = self.clock() if now is None else now
        kept = [clip(w, ERROR_MAX) for w in warnings]
        warnings_text = to_json(kept, field="warnings") if kept else None
        result_text = to_json(outcome.result, field="result") if isinstance(outcome, Succeeded) else None
        error = None if isinstance(outcome, Succeeded) else clip(outcome.error, ERROR_MAX)
        tail = tail_text(stderr_tail)
        uncharged = 1 if isinstance(outcome, Deferred) else 0
        with self.db.write() as conn:
            job = self._running(conn, job_id, "finish")
            status, reason, next_at = _settle(outcome, job)
            conn.execute(
                "UPDATE jobs SET status = ?, updated_at = ?, finished_at = ?, next_attempt_at = ?, result = ?,"
                " last_error = ?, stderr_tail = ?, account = ?, uid = ?, attempt = attempt - ?,"
                " started_at = CASE WHEN ? THEN NULL ELSE started_at END, warnings = ? WHERE id = ?",
                (status, now, None if status == "queued" else now, next_at, result_text, error, tail,
                 account, uid, uncharged, uncharged, warnings_text, job_id))
            self._close_attempt(conn, job, now, outcome.kind, error, exit_code=exit_code, account=account,
                                uid=uid, stderr_tail=tail)
            self._transition(conn, job_id, "running", status, now, reason)
            return status

    def cancel_queued(self, job_id: str, error: str, reason: str, *, now: float | None = None) -> bool:
        """Settle a job that is still queued as ``failed`` without running it (a schedule's
        ``if_running: cancel`` superseded it); False when it is no longer queued."""
        now = self.clock() if now is None else now
        with self.db.write() as conn:
            updated = conn.execute("UPDATE jobs SET status = 'failed', finished_at = ?, updated_at = ?, last_error = ?"
                                   " WHERE id = ? AND status = 'queued'", (now, now, clip(error, ERROR_MAX), job_id)
                                   ).rowcount
            if updated:
                self._transition(conn, job_id, "queued", "failed", now, reason)
            return bool(updated)

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

    def recover_after_crash(self, now: float | None = None, *,
                            alive: Callable[[str], bool] | None = None) -> list[tuple[str, str]]:
        """Settle every job a dead gateway left ``running``: re-queue it if attempts remain
        (the interrupted attempt counts, it may have had effects), else mark it dead. A job
        held by another process that is still alive (``claimed_by``, checked by ``alive``)
        is left to it.

        Call only at boot, before any dispatcher of this database runs: a live worker's
        job is indistinguishable from an orphan here.
        """
        now = self.clock() if now is None else now
        error = "the gateway stopped while this job was running (crash, kill or power loss)"
        with self.db.write() as conn:
            rows = conn.execute(f"{_SELECT} WHERE jobs.status = 'running' ORDER BY jobs.started_at, jobs.rowid").fetchall()
            jobs = [Job.from_row(r) for r in rows]
            return [self._crashed(conn, job, now, error) for job in jobs
                    if not (job.claimed_by and alive is not None and alive(job.claimed_by))]

    def _crashed(self, conn: sqlite3.Connection, job: Job, now: float, error: str) -> tuple[str, str]:
        status = "queued" if job.attempt < job.max_attempts else "dead"
        conn.execute("UPDATE jobs SET status = ?, next_attempt_at = ?, finished_at = ?, last_error = ?,"
                     " updated_at = ?, claimed_by = NULL WHERE id = ?",
                     (status, now, None if status == "queued" else now, error, now, job.id))
        self._close_attempt(conn, job, now, "crashed", error)
        self._transition(conn, job.id, "running", status, now, "recovered_after_crash")
        return job.id, status

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
            rows = conn.execute(f"{_SELECT} WHERE substr(jobs.id, 1, ?) = ? LIMIT 2",
                                (len(id_or_prefix), id_or_prefix)).fetchall()
        if len(rows) > 1:
            raise StateError("more than one job id starts with this", where=f"job {id_or_prefix}",
                             fix="give more characters of the id")
        return Job.from_row(rows[0]) if rows else None

    def _filters(self, status: str | None, plugin: str | None, plugins: Iterable[str] | None,
                 since: float | None = None, until: float | None = None,
                 search: str | None = None) -> tuple[list[str], list[Any]] | None:
        """WHERE clauses for a listing; None when ``plugins`` allows nothing. ``since`` /
        ``until`` bound the creation time; ``search`` is a case-insensitive substring of the
        last error or the stderr tail."""
        if status is not None and status not in STATUSES:
            raise StateError(f"unknown job status {status!r}", where="status",
                             fix=f"use one of {', '.join(STATUSES)}")
        clauses: list[str] = []
        args: list[Any] = []
        for clause, value in (("jobs.status = ?", status), ("jobs.plugin = ?", plugin),
                              ("jobs.created_at >= ?", since), ("jobs.created_at < ?", until)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(jobs.last_error LIKE ? ESCAPE '\\' OR jobs.stderr_tail LIKE ? ESCAPE '\\')")
            args.extend([pattern, pattern])
        if plugins is not None:
            allowed = sorted(set(plugins))
            if not allowed:
                return None
            clauses.append(f"jobs.plugin IN ({','.join('?' * len(allowed))})")
            args.extend(allowed)
        return clauses, args

    def list_jobs(self, status: str | None = None, plugin: str | None = None, limit: int = 50, *,
                  plugins: Iterable[str] | None = None) -> list[Job]:
        """Whole jobs, newest first. ``plugins`` restricts to a set of plugins (an API token's
        scopes). Listings meant for people or clients use ``summaries``: payloads and results
        can be megabytes each."""
        found = self._filters(status, plugin, plugins)
        if found is None:
            return []
        clauses, args = found
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            rows = conn.execute(f"{_SELECT}{where} ORDER BY jobs.created_at DESC, jobs.rowid DESC LIMIT ?",
                                (*args, max(0, limit))).fetchall()
        return [Job.from_row(r) for r in rows]

    def summaries(self, status: str | None = None, plugin: str | None = None, limit: int = 50, *,
                  plugins: Iterable[str] | None = None, before: str | None = None, since: float | None = None,
                  until: float | None = None, search: str | None = None) -> list[JobSummary]:
        """Job summaries, newest first, without payload, event, result or stderr: a listing
        whose size is bounded by ``limit`` whatever the jobs carry (``GET /job/{id}`` and
        ``job show`` have the rest). ``before`` is a job id: list only jobs older than it
        (the next page after a listing that ended with that job). ``since``/``until``/
        ``search`` as ``_filters`` reads them."""
        found = self._filters(status, plugin, plugins, since, until, search)
        if found is None:
            return []
        clauses, args = found
        if before is not None:
            clauses.append("(jobs.created_at, jobs.rowid) < (SELECT created_at, rowid FROM jobs WHERE id = ?)")
            args.append(before)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM jobs{where}"
                                " ORDER BY jobs.created_at DESC, jobs.rowid DESC LIMIT ?",
                                (*args, max(0, limit))).fetchall()
        return [JobSummary.from_row(r) for r in rows]

    def children(self, job_id: str, limit: int = 50) -> list[JobSummary]:
        """The jobs this job's events started (pipeline steps, lifecycle hooks), oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE jobs.parent_job_id = ?"
                                " ORDER BY jobs.created_at, jobs.rowid LIMIT ?", (job_id, max(0, limit))).fetchall()
        return [JobSummary.from_row(r) for r in rows]

    def ancestors(self, job_id: str, limit: int = 64) -> list[JobSummary]:
        """The chain above a job: its parent, the parent's parent... up to the root (or the
        first one pruned away), nearest first."""
        out: list[JobSummary] = []
        with self.db.read() as conn:
            row = conn.execute("SELECT parent_job_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            parent = row[0] if row is not None else None
            while parent is not None and len(out) < limit:
                found = conn.execute(f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE jobs.id = ?", (parent,)).fetchone()
                if found is None:
                    break
                summary = JobSummary.from_row(found)
                out.append(summary)
                parent = summary.parent_job_id
        return out

    def queue_depth(self) -> int:
        """Jobs waiting to run, including retries not yet due."""
        with self.db.read() as conn:
            return int(conn.execute("SELECT count(*) FROM jobs INDEXED BY jobs_due WHERE status = 'queued'")
                       .fetchone()[0])

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
        row = conn.execute(f"{_SELECT} WHERE jobs.id = ?", (job_id,)).fetchone()
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
        """Complete the open attempt row that ``claim`` (or ``start_now``) wrote for this run."""
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
    if isinstance(outcome, Deferred):
        return "queued", "gateway_fault", outcome.next_attempt_at
    raise TypeError(f"not a job outcome: {outcome!r}")


def _limit_lookup(limits: RunningLimits | None) -> Callable[[str], int | None]:
    if limits is None:
        return lambda _plugin: None
    if callable(limits):
        return limits
    return limits.get


def _at_cap(limit: int | None, running: int) -> bool:
    return limit is not None and running >= limit
