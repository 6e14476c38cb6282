"""The state database schema as an append-only list of migrations.

``MIGRATIONS[n]`` takes the database from ``PRAGMA user_version`` n to n+1; ``db.migrate``
applies each in one transaction. Never edit a released step: append a new one. Statements
are listed one by one (not a script) because ``executescript`` would commit the migration
transaction half-way.

Times are REAL seconds since the epoch (UTC): exact to compare in the claim query, and
rendered as ISO-8601 only at the edges. JSON columns hold ``json.dumps`` text.
"""

from __future__ import annotations

# "Duct" in ASCII: marks the file as ductile's so a stray SQLite file is refused, not migrated.
APPLICATION_ID = 0x44756374

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "timed_out", "dead")

_V1 = (
    f"""CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        plugin          TEXT NOT NULL,
        command         TEXT NOT NULL,
        payload         TEXT NOT NULL,
        event           TEXT,
        status          TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in JOB_STATUSES)})),
        attempt         INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
        max_attempts    INTEGER NOT NULL CHECK (max_attempts >= 1),
        next_attempt_at REAL NOT NULL,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        started_at      REAL,
        finished_at     REAL,
        result          TEXT,
        last_error      TEXT,
        stderr_tail     TEXT,
        dedupe_key      TEXT,
        parent_job_id   TEXT REFERENCES jobs(id) ON DELETE SET NULL,
        event_depth     INTEGER NOT NULL DEFAULT 0 CHECK (event_depth >= 0),
        account         TEXT,
        uid             INTEGER,
        CHECK (attempt <= max_attempts)
    )""",
    "CREATE UNIQUE INDEX jobs_dedupe_key ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL",
    "CREATE INDEX jobs_claim ON jobs (status, next_attempt_at)",
    "CREATE INDEX jobs_plugin_status ON jobs (plugin, status)",
    "CREATE INDEX jobs_created ON jobs (created_at)",
    "CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL",
    """CREATE TABLE job_transitions (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        from_status TEXT,
        to_status   TEXT NOT NULL,
        at          REAL NOT NULL,
        reason      TEXT NOT NULL
    )""",
    "CREATE INDEX job_transitions_job ON job_transitions (job_id, id)",
    """CREATE TABLE job_attempts (
        id          INTEGER PRIMARY KEY,
        job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        attempt     INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        outcome     TEXT NOT NULL,
        exit_code   INTEGER,
        error       TEXT,
        account     TEXT,
        uid         INTEGER,
        stderr_tail TEXT
    )""",
    "CREATE INDEX job_attempts_job ON job_attempts (job_id, id)",
    """CREATE TABLE plugin_state (
        plugin     TEXT PRIMARY KEY,
        state      TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE events (
        id            TEXT PRIMARY KEY,
        type          TEXT NOT NULL,
        payload       TEXT NOT NULL,
        source_job_id TEXT REFERENCES jobs(id) ON DELETE SET NULL,
        plugin        TEXT,
        depth         INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
        created_at    REAL NOT NULL
    )""",
    "CREATE INDEX events_source_job ON events (source_job_id) WHERE source_job_id IS NOT NULL",
    "CREATE INDEX events_type ON events (type)",
    """CREATE TABLE vault_audit (
        id        INTEGER PRIMARY KEY,
        at        REAL NOT NULL,
        op        TEXT NOT NULL,
        principal TEXT,
        actor     TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        detail    TEXT NOT NULL
    )""",
    "CREATE INDEX vault_audit_principal ON vault_audit (principal, id)",
)

# v2: when each schedule last fired, so a gateway that was down runs a missed slot once
# (not once per missed slot) and a restart never fires the same slot twice.
_V2 = (
    """CREATE TABLE schedule_state (
        id          TEXT PRIMARY KEY,
        plugin      TEXT NOT NULL,
        command     TEXT NOT NULL,
        last_slot   REAL NOT NULL,
        last_job_id TEXT REFERENCES jobs(id) ON DELETE SET NULL,
        updated_at  REAL NOT NULL
    )""",
)

# v3: a claim that never sorts or scans the queue. The claim takes, per plugin, the queued
# job due the longest (an index seek on jobs_due), skipping plugins at their concurrency
# cap without reading their rows; running jobs are counted from their own small index.
# jobs_claim (status, next_attempt_at) is superseded: one index less to write per change.
_V3 = (
    "CREATE INDEX jobs_due ON jobs (plugin, next_attempt_at) WHERE status = 'queued'",
    "CREATE INDEX jobs_running ON jobs (plugin) WHERE status = 'running'",
    "DROP INDEX jobs_claim",
)

# v4: an event's payload is stored once. A job started by an event keeps the event's id
# and a small envelope (type, source, pipeline, depth); its payload and ``event.payload``
# are read from the event row. A 1 MiB event used to be stored three times. The event row
# cannot be deleted while a job refers to it (foreign key, no action).
_V4 = (
    "ALTER TABLE jobs ADD COLUMN event_id TEXT REFERENCES events(id)",
    "CREATE INDEX jobs_event ON jobs (event_id) WHERE event_id IS NOT NULL",
)

# v5: who holds a running job outside serve. ``plugin run`` records its job in the ledger as
# running (so serve's per-plugin caps count it) and names its process here; serve recovers
# such a job when that process is gone, instead of waiting for its own next boot.
_V5 = (
    "ALTER TABLE jobs ADD COLUMN claimed_by TEXT",
)

# v6: hostile input and upstream compatibility (#11, #12).
#   jobs.warnings   what the gateway dropped from the last run's answer (reserved event types,
#                   events or routed jobs past their caps), as a JSON list of one-line strings
#   jobs.trigger    what started the job: api:<token>, webhook:<path>, schedule, cli,
#                   pipeline:<parent job id>
#   jobs.authority  the root trigger and the scopes it held (JSON), inherited down a pipeline
#                   chain so a routed write step needs the root's write scope
#   events.dedupe_key  a plugin's dedupe_key, inherited by the jobs the event starts
#   dedupe_keys     keys seen within a window: webhook delivery ids and bodies (replays) and
#                   routed dedupe keys; a row is live until expires_at
_V6 = (
    "ALTER TABLE jobs ADD COLUMN warnings TEXT",
    "ALTER TABLE jobs ADD COLUMN trigger TEXT",
    "ALTER TABLE jobs ADD COLUMN authority TEXT",
    "ALTER TABLE events ADD COLUMN dedupe_key TEXT",
    """CREATE TABLE dedupe_keys (
        key        TEXT PRIMARY KEY,
        job_id     TEXT REFERENCES jobs(id) ON DELETE SET NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX dedupe_keys_expiry ON dedupe_keys (expires_at)",
)

# serve in production (#15).
#   breakers               the circuit breaker of each plugin's scheduled runs: closed | open |
#                          half_open, consecutive failures, when an open one may be tried again
#   schedule_state.created_at   when a gateway first saw the schedule (one-shot ``after:``)
#   indexes for retention  prune by age without scanning: events and audit rows by time, and
#                          the foreign keys a deleted job sets to NULL (dedupe_keys.job_id had none,
#                          so each deleted job scanned every remembered key)
_V7 = (
    """CREATE TABLE breakers (
        plugin      TEXT PRIMARY KEY,
        state       TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
        failures    INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
        opened_at   REAL,
        retry_at    REAL,
        last_error  TEXT,
        updated_at  REAL NOT NULL
    )""",
    "ALTER TABLE schedule_state ADD COLUMN created_at REAL",
    "CREATE INDEX events_created ON events (created_at)",
    "CREATE INDEX vault_audit_at ON vault_audit (at)",
    "CREATE INDEX dedupe_keys_job ON dedupe_keys (job_id) WHERE job_id IS NOT NULL",
    "CREATE INDEX schedule_state_job ON schedule_state (last_job_id) WHERE last_job_id IS NOT NULL",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
