"""Open the SQLite state database: private file, WAL, versioned migrations, transactions.

Choices, and why:

* **WAL** lets the CLI read (``ductile job list``) while ``serve`` writes, and a reader
  never blocks the writer.
* **synchronous=FULL**: in WAL mode NORMAL survives ``kill -9`` but may drop the last
  commits on power loss. For ductile a lost commit is a job accepted with 202 that
  vanishes, or a ``succeeded`` write command that runs again. FULL costs one fsync per
  transaction (well under a millisecond here), small next to spawning a plugin.
* **Connections**: a small pool, one connection checked out per thread for the length of
  a transaction (nested blocks on the same thread join it). Writers are serialised by
  SQLite itself (``BEGIN IMMEDIATE`` + ``busy_timeout``), the same mechanism that already
  has to arbitrate between processes, so threads and processes contend in one way. A
  pool instead of ``threading.local`` because the HTTP API serves each request on a fresh
  thread; per-thread connections would leak one per request.
* **Mode 0600**: the file is created empty with ``O_EXCL`` and 0600 before SQLite opens
  it; SQLite gives ``-wal``/``-shm`` the main file's permissions. Loose modes on files we
  own are tightened, never widened.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar, cast

from ductile.errors import StateError
from ductile.state.schema import APPLICATION_ID, MIGRATIONS

if TYPE_CHECKING:
    from ductile.state.audit import AuditLog
    from ductile.state.dedupe import SeenKeys
    from ductile.state.events import EventLog
    from ductile.state.jobs import JobQueue
    from ductile.state.plugin_state import PluginStateStore
    from ductile.state.schedules import ScheduleStore

BUSY_TIMEOUT_MS = 30_000   # a slow disk under a busy serve; waiting beats failing a claim
POOL_IDLE_MAX = 8          # idle connections kept for reuse; more are closed on release
SIDE_FILES = ("", "-wal", "-shm")
_Store = TypeVar("_Store")


def _fix_for(path: str) -> str:
    return f"check state.path in the config and that {os.path.dirname(path) or '.'} is writable by uid {os.geteuid()}"


def _ensure_parent(path: str) -> None:
    """Create missing parent directories 0700; existing ones are left as they are."""
    parent = os.path.dirname(os.path.abspath(path))
    missing: list[str] = []
    probe = parent
    while probe and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask; be exact
        except FileExistsError:
            pass
        except OSError as err:
            raise StateError(f"cannot create state directory {directory}: {err.strerror}",
                             where="state.path", fix=_fix_for(path)) from err


def _create_private(path: str) -> None:
    """Create the database file empty and 0600, so it is never briefly world-readable."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise StateError(f"cannot create state database {path}: {err.strerror}",
                         where="state.path", fix=_fix_for(path)) from err
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def tighten_modes(path: str) -> None:
    """Drop group/other bits from the database and its WAL/SHM files when we own them."""
    for suffix in SIDE_FILES:
        try:
            st = os.stat(path + suffix)
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(path + suffix, st.st_mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to change; filesystem reconciliation reports it


class StateDB:
    """The state database: pooled connections and transaction blocks.

    ``write()`` opens ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two
    claimers can never both read the same queued row and then both update it);
    ``read()`` a consistent snapshot. Nested blocks on one thread join the outer
    transaction, so a caller can make several store calls atomic.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA trusted_schema = OFF")
        except sqlite3.Error as err:
            raise StateError(f"cannot open state database {self.path}: {err}", where="state.path",
                             fix=_fix_for(self.path)) from err
        conn.row_factory = sqlite3.Row
        return conn

    def _acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StateError(f"state database {self.path} is closed", where="state.path",
                                 fix="open it again with open_state()")
            if os.getpid() != self._pid:
                # A forked child must not use its parent's SQLite handles; forget them.
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        with self._lock:
            if not self._closed and not conn.in_transaction and len(self._idle) < POOL_IDLE_MAX \
                    and os.getpid() == self._pid:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def _transaction(self, begin: str, mode: str) -> Iterator[sqlite3.Connection]:
        held: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            if mode == "write" and self._local.mode == "read":
                raise RuntimeError("a write block cannot nest inside a read block; open the write first")
            yield held
            return
        conn = self._acquire()
        self._local.conn, self._local.mode = conn, mode
        try:
            try:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise self._state_error(err) from err
        finally:
            self._local.conn = None
            self._release(conn)

    def _state_error(self, err: sqlite3.Error) -> StateError:
        text = str(err)
        if isinstance(err, sqlite3.IntegrityError):
            return StateError(f"state database refused a change: {text}", where=self.path,
                              fix="this is a bug in the caller; report it with the command that ran")
        if "locked" in text or "busy" in text:
            fix = "another process holds the write lock too long; check for a stuck ductile process"
        elif "readonly" in text:
            fix = f"run as the user that owns {self.path} (the gateway user)"
        else:
            fix = "check the disk and the file; restore from `ductile system backup` if it is damaged"
        return StateError(f"state database error: {text}", where=self.path, fix=fix)

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); joins an enclosing block on this thread."""
        return self._transaction("BEGIN IMMEDIATE", "write")

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A read snapshot (``BEGIN``); joins an enclosing block on this thread."""
        return self._transaction("BEGIN", "read")

    def close(self) -> None:
        """Close idle connections; connections in use close when their block ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the stores, built on first use so importing db.py stays small ----------------

    @property
    def jobs(self) -> JobQueue:
        from ductile.state.jobs import JobQueue

        return self._store("_jobs", JobQueue)

    @property
    def plugin_state(self) -> PluginStateStore:
        from ductile.state.plugin_state import PluginStateStore

        return self._store("_plugin_state", PluginStateStore)

    @property
    def events(self) -> EventLog:
        from ductile.state.events import EventLog

        return self._store("_events", EventLog)

    @property
    def schedules(self) -> ScheduleStore:
        from ductile.state.schedules import ScheduleStore

        return self._store("_schedules", ScheduleStore)

    @property
    def dedupe(self) -> SeenKeys:
        from ductile.state.dedupe import SeenKeys

        return self._store("_dedupe", SeenKeys)

    @property
    def audit(self) -> AuditLog:
        from ductile.state.audit import AuditLog

        return self._store("_audit", AuditLog)

    def _store(self, attr: str, cls: Callable[[StateDB], _Store]) -> _Store:
        with self._lock:
            if attr not in self.__dict__:
                self.__dict__[attr] = cls(self)
            return cast(_Store, self.__dict__[attr])

    # -- schema ----------------------------------------------------------------------

    def use_wal(self) -> None:
        """Switch the file to WAL (persistent, so later connections inherit it). Outside any
        transaction, as SQLite requires; a file that is not a database fails here."""
        conn = self._acquire()
        try:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.Error as err:
            raise self._state_error(err) from err
        finally:
            self._release(conn)
        if mode.lower() != "wal":
            raise StateError(f"state database {self.path} could not switch to WAL (journal_mode={mode})",
                             where="state.path", fix="put the database on a local filesystem that supports WAL")

    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return the version reached."""
        target = len(MIGRATIONS)
        while True:
            with self.write() as conn:
                current = self._check_identity(conn, target)
                if current >= target:
                    return current
                for statement in MIGRATIONS[current]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {current + 1}")
                if current == 0:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _check_identity(self, conn: sqlite3.Connection, target: int) -> int:
        """The schema version, after refusing files that are not ours or are too new."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        foreign = app_id not in (0, APPLICATION_ID) or (
            app_id == 0 and conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] > 0)
        if foreign:
            raise StateError(f"{self.path} is an SQLite database but not a ductile state database",
                             where="state.path", fix="point state.path at a new file or at ductile's database")
        if version > target:
            raise StateError(
                f"state database schema version {version} is newer than this ductile understands ({target})",
                where=self.path,
                fix="upgrade ductile to the release that wrote it, or restore a backup made by this release")
        return version


def open_state(path: str, *, create: bool = True) -> StateDB:
    """Open (and, with ``create``, create) the state database and bring its schema up to date.

    ``create=False`` is for readers such as ``ductile job list``: a missing database is
    refused instead of being created empty next to a typo'd path.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        if not create:
            raise StateError(
                f"state database {path} does not exist (nothing has run yet, or state.path points elsewhere)",
                where="state.path",
                fix="start `ductile serve` once to create it, or set state.path to the gateway's database")
        _ensure_parent(path)
        _create_private(path)
    elif not os.path.isfile(path):
        raise StateError(f"{path} is not a regular file", where="state.path",
                         fix="point state.path at a file, not a directory")
    db = StateDB(path)
    try:
        db.use_wal()
        db.migrate()
    except BaseException:
        db.close()
        raise
    tighten_modes(path)
    return db
