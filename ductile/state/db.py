"""Open the SQLite state database: private file, WAL, versioned migrations, transactions.

Choices, and why:

* **WAL** lets the CLI read (``ductile job list``) while ``serve`` writes, and a reader
  never blocks the writer.
* **synchronous=FULL** by default: SQLite's own words — "transactions are durable across
  application crashes regardless of the synchronous setting", while in WAL mode "a
  transaction committed with synchronous=NORMAL might roll back following a power loss or
  system crash". A job accepted with 202 must survive both, so intake commits are FULL.
  The one exception is a worker recording a job and claiming the next (``write(durable=
  False)``): that commit survives ``kill -9``; after a power loss it may roll back, and
  the job is then recovered at boot and runs again (at least once, never lost). It saves
  an fsync per job, which a profile showed to be the largest cost left in a burst.
* **Connections**: a small pool, one connection checked out per thread for the length of
  a transaction (nested blocks on the same thread join it). Writers of one process queue
  on a lock of their own before ``BEGIN IMMEDIATE``; between processes SQLite arbitrates
  (``BEGIN IMMEDIATE`` + ``busy_timeout``). The busy handler sleeps up to 100 ms between
  tries, so letting threads of one process contend through it made a burst of triggers
  and two workers spend most of their time asleep on a lock that was free. A pool instead
  of ``threading.local`` because the HTTP API serves each request on a fresh thread;
  per-thread connections would leak one per request.
* **Mode 0600**: the file is created empty with ``O_EXCL`` and 0600 before SQLite opens
  it; SQLite gives ``-wal``/``-shm`` the main file's permissions. Loose modes on files we
  own are tightened, never widened.
* **Nothing is silently re-created** (``open_state``): only a file this code has just
  created is initialised; an empty or foreign file, a second hard link or a stale WAL is
  refused with the path and the fix. Readers open read-only and never migrate.
* **Bounded WAL**: ``journal_size_limit`` cuts the WAL back after each checkpoint that
  resets it, and serve runs ``wal_checkpoint(TRUNCATE)`` periodically (``checkpoint``), so
  one burst of large rows does not leave a gigabyte WAL behind for good.
* **Errors say what to do**: every SQLite failure is diagnosed by cause (``faults``):
  disk full, read-only mount, not ours to write, damaged, locked — each with its own fix.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar, cast

from ductile.durable import fsync_dir
from ductile.errors import StateError
from ductile.state import faults
from ductile.state.schema import APPLICATION_ID, MIGRATIONS

if TYPE_CHECKING:
    from ductile.state.audit import AuditLog
    from ductile.state.breakers import BreakerStore
    from ductile.state.dedupe import SeenKeys
    from ductile.state.events import EventLog
    from ductile.state.jobs import JobQueue
    from ductile.state.plugin_state import PluginStateStore
    from ductile.state.schedules import ScheduleStore

BUSY_TIMEOUT_MS = 30_000   # a slow disk under a busy serve; waiting beats failing a claim
POOL_IDLE_MAX = 8          # idle connections kept for reuse; more are closed on release
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint resets it
SIDE_FILES = ("", "-wal", "-shm")
SQLITE_HEADER = b"SQLite format 3\x00"
_Store = TypeVar("_Store")


def fault_error(path: str, cause: str, detail: str, *, where: str | None = None) -> StateError:
    """A StateError whose message and fix match ``cause`` (see ``faults``)."""
    fault = faults.diagnose(cause, detail, faults.fs_facts(path))
    return StateError(fault.message, where=where or path, fix=fault.fix, cause=fault.cause, transient=fault.transient)


def os_error(path: str, err: OSError, doing: str, *, where: str = "state.path") -> StateError:
    return fault_error(path, faults.cause_of_errno(err.errno), f"{doing}: {err.strerror}", where=where)


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
            raise os_error(path, err, f"cannot create state directory {directory}") from err


def _damaged(path: str, cause: str, what: str) -> StateError:
    """Refuse a file at state.path that ductile did not make (or that lost its contents)."""
    fault = faults.diagnose(cause, what, faults.fs_facts(path))
    return StateError(f"{path} {what}; ductile initialises only a database file it has just created itself",
                      where="state.path", fix=fault.fix, cause=fault.cause, transient=False)


def check_existing(path: str) -> None:
    """Refuse an existing state.path that is not a regular, singly linked SQLite file.

    An empty file is refused, never initialised: it is what a truncated copy, a wrong
    restore or a full disk leaves, and replacing it with a fresh database would make every
    job in the ledger silently vanish. A second hard link is refused because SQLite names
    its ``-wal`` after the path: two paths to one file are two WALs, and two gateways (one
    lock per path) writing it corrupt it.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise os_error(path, err, "cannot stat the state database") from err
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"{path} is not a regular file", where="state.path",
                         fix="point state.path at a file, not a directory")
    if st.st_nlink > 1:
        raise StateError(f"{path} has {st.st_nlink} hard links; a state database reached through two names gets two "
                         "WAL files and two gateways, and is corrupted", where="state.path",
                         fix=f"keep one name: find the others (find / -xdev -samefile {path}) and unlink them",
                         cause="hard_link")
    if st.st_size == 0:
        raise _damaged(path, "not_a_database", "is empty (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as err:
        raise os_error(path, err, "cannot read the state database") from err
    if head != SQLITE_HEADER:
        raise _damaged(path, "not_a_database", "is not an SQLite database (wrong header)")


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

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        # Writers of this process queue here, in order, instead of in SQLite's busy handler,
        # which polls with sleeps of up to 100 ms: under a burst that left workers asleep
        # while the lock was free. Other processes still meet at BEGIN IMMEDIATE.
        self._writers = threading.Lock()
        self._sync: dict[int, bool] = {}  # connection -> committing with synchronous=FULL

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:  # a reader never writes, migrates or creates anything
                from urllib.parse import quote

                conn = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA trusted_schema = OFF")
            if not self.readonly:
                conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except sqlite3.Error as err:
            raise self._state_error(err) from err
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
    def _transaction(self, begin: str, mode: str, durable: bool = True) -> Iterator[sqlite3.Connection]:
        held: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if held is not None:
            if mode == "write" and self._local.mode == "read":
                raise RuntimeError("a write block cannot nest inside a read block; open the write first")
            yield held
            return
        conn = self._acquire()
        self._local.conn, self._local.mode = conn, mode
        writer = mode == "write"
        if writer:
            self._writers.acquire()
        try:
            try:
                if writer and self._sync.get(id(conn)) != durable:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._sync[id(conn)] = durable
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
            if writer:
                self._writers.release()
            self._local.conn = None
            self._release(conn)

    def _state_error(self, err: sqlite3.Error) -> StateError:
        """One StateError per SQLite failure, with the fix for its cause (see ``faults``)."""
        text = str(err)
        if isinstance(err, sqlite3.IntegrityError):
            return StateError(f"state database refused a change: {text}", where=self.path,
                              fix="this is a bug in the caller; report it with the command that ran")
        cause = faults.cause_of_sqlite(getattr(err, "sqlite_errorname", None), text)
        return fault_error(self.path, cause, text)

    def write(self, *, durable: bool = True) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); joins an enclosing block on this thread.

        ``durable=False`` commits it with ``synchronous=NORMAL`` (no fsync of its own): it
        survives a crash of the process like any commit, but a power loss may roll it back
        until the next durable commit or checkpoint syncs the WAL. Only for writes whose
        loss the next boot repairs (a worker's record-and-claim: the job is recovered and
        runs again); never for a promise made to a client (a 202).
        """
        if self.readonly:
            raise StateError(f"state database {self.path} was opened read-only", where=self.path,
                             fix="this is a bug: a read command tried to write; report it with the command that ran")
        return self._transaction("BEGIN IMMEDIATE", "write", durable)

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

    @property
    def breakers(self) -> BreakerStore:
        from ductile.state.breakers import BreakerStore

        return self._store("_breakers", BreakerStore)

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

    def check_schema(self) -> int:
        """For a read-only opening: the schema must be exactly this release's (never migrated here)."""
        target = len(MIGRATIONS)
        with self.read() as conn:
            version = self._check_identity(conn, target)
        if version < target:
            raise StateError(
                f"state database schema version {version} is older than this ductile's ({target}); "
                "read commands never migrate it", where=self.path,
                fix="start `ductile serve` (or run `ductile plugin run`) once with this config: opening it for "
                    "writing migrates it; then retry")
        return version

    def quick_check(self) -> None:
        """``PRAGMA quick_check`` (O(N) but no index cross-check): serve runs it at boot so a
        damaged file is refused with the fix instead of failing jobs one by one later."""
        with self.read() as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise fault_error(self.path, "corrupt", f"PRAGMA quick_check: {'; '.join(rows)[:300]}", where="state.path")

    def checkpoint(self, *, wait_ms: int = 1000) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: copy the WAL into the database and cut it to
        zero bytes. Returns SQLite's (busy, WAL frames, frames checkpointed); busy = 1 means a
        reader or writer held on for ``wait_ms`` and the WAL was left for the next round.

        On its own connection with a short busy timeout: a TRUNCATE checkpoint makes new
        writers wait while it is pending, so it must give up quickly rather than stall the
        queue for the pool's 30 s."""
        try:
            conn = sqlite3.connect(self.path, timeout=wait_ms / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise self._state_error(err) from err
        try:
            conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as err:
            raise self._state_error(err) from err
        finally:
            conn.close()
        return int(row[0]), int(row[1]), int(row[2])

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


def _initialise(path: str) -> None:
    """Make a new, migrated database at ``path`` without ever exposing a half-made file.

    It is built under a temporary name (created ``O_EXCL`` and 0600, so never briefly
    world-readable), checkpointed into one file, and linked into place: ``link`` fails if
    ``path`` appeared meanwhile, so an existing file is never replaced, and a crash leaves
    only a temporary file, never an empty database at ``path``. Stale ``-wal``/``-shm``
    files without their database are refused: SQLite would replay them into the new file.
    """
    for suffix in ("-wal", "-shm"):
        side = path + suffix
        if os.path.lexists(side):
            raise StateError(f"{side} exists but its database {path} does not; it may hold the last commits of a "
                             "database that was moved or deleted, and SQLite would replay it into a new one",
                             where="state.path", fix=f"restore {path} beside it, or move it aside: mv {side} {side}.stale",
                             cause="stale_wal")
    _ensure_parent(path)
    directory, base = os.path.split(path)
    temp = os.path.join(directory, _INIT_TEMP.format(base=base) + secrets.token_hex(6))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
    except OSError as err:
        raise os_error(path, err, f"cannot create state database {path}") from err
    try:
        db = StateDB(temp)
        try:
            db.use_wal()
            db.migrate()
            db.checkpoint()
        finally:
            db.close()
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs (checked by the caller)
        except OSError as err:
            raise os_error(path, err, f"cannot create state database {path}") from err
        fsync_dir(directory)
    finally:
        for suffix in SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp + suffix)


_INIT_TEMP = ".{base}.init-"
STALE_INIT_AGE = 600.0  # seconds: an unlinked initialisation temp this old belongs to no live process


def _drop_init_leftovers(path: str) -> None:
    """Remove what a process killed inside ``_initialise`` left: a temp still linked to the
    database (killed between link and unlink: it would count as a second hard link), or an
    old temp that never got linked."""
    directory, base = os.path.split(path)
    prefix = _INIT_TEMP.format(base=base)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix) and not n.endswith(("-wal", "-shm"))]
    except OSError:
        return
    import time

    for name in names:
        temp = os.path.join(directory, name)
        try:
            linked = os.path.lexists(path) and os.path.samefile(temp, path)
            if not linked and time.time() - os.lstat(temp).st_mtime < STALE_INIT_AGE:
                continue  # may be another process initialising right now
            for suffix in ("-wal", "-shm", ""):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp + suffix)
        except OSError:
            continue


def open_state(path: str, *, create: bool = True) -> StateDB:
    """Open the state database for writing (``create=True``) or reading (``create=False``).

    Writers (serve, ``plugin run``, vault commands that audit): a missing file is created
    and initialised; an existing one is checked (``check_existing``) and migrated.
    Readers (``job list``, ``job show``, ``vault audit``): the file must exist; it is opened
    read-only and never migrated, created or changed — an older schema is reported with
    the command that migrates it, instead of a read changing what it reads.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.lexists(path):
        if not create:
            raise StateError(
                f"state database {path} does not exist (nothing has run yet, or state.path points elsewhere)",
                where="state.path",
                fix="start `ductile serve` once to create it, or set state.path to the gateway's database")
        _initialise(path)
    elif create:
        _drop_init_leftovers(path)
    check_existing(path)
    db = StateDB(path, readonly=not create)
    try:
        if create:
            db.use_wal()
            db.migrate()
        else:
            db.check_schema()
    except BaseException:
        db.close()
        raise
    if create:
        tighten_modes(path)
    return db
