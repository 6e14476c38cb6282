"""The state database file: creation, modes, migrations, refusals, transactions."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from ductile.errors import StateError
from ductile.state import open_state
from ductile.state.schema import APPLICATION_ID, MIGRATIONS


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    finally:
        conn.close()


def test_fresh_database_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "ductile.db"
    with open_state(str(path)) as db:
        assert db.schema_version() == len(MIGRATIONS)
    assert {"jobs", "job_transitions", "job_attempts", "plugin_state", "events", "vault_audit"} <= _tables(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = str(tmp_path / "ductile.db")
    with open_state(path) as db:
        job_id = db.jobs.enqueue("echo", "poll", {"n": 1}, max_attempts=3)
        schema = _schema(path)
    for _ in range(3):
        with open_state(path) as db:
            assert db.schema_version() == len(MIGRATIONS)
            job = db.jobs.get(job_id)
            assert job is not None and job.payload == {"n": 1}
    assert _schema(path) == schema


def _schema(path: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL"))
    finally:
        conn.close()


def test_connection_pragmas(tmp_path: Path) -> None:
    with open_state(str(tmp_path / "ductile.db")) as db, db.read() as conn:
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_a_database_newer_than_the_code_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ductile.db"
    open_state(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StateError) as info:
        open_state(str(path))
    line = info.value.one_line()
    assert "\n" not in line and str(path) in line and "newer" in line and "fix:" in line
    assert "upgrade ductile" in line


def test_a_foreign_sqlite_file_is_refused_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="not a ductile state database"):
        open_state(str(path))
    assert _tables(path) == {"customers"}


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ductile.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError) as info:
        open_state(str(path))
    assert str(path) in info.value.one_line() and "fix:" in info.value.one_line()


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "ductile.db"
    old = os.umask(0)
    try:
        with open_state(str(path)) as db:
            db.jobs.enqueue("echo", "poll", {}, max_attempts=1)  # forces -wal and -shm into existence
            for suffix in ("", "-wal", "-shm"):
                side = Path(str(path) + suffix)
                assert side.exists(), suffix
                assert _mode(side) == 0o600, (suffix, oct(_mode(side)))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "deeper") == 0o700


def test_an_existing_loose_database_is_tightened_never_widened(tmp_path: Path) -> None:
    path = tmp_path / "ductile.db"
    open_state(str(path)).close()
    os.chmod(path, 0o644)
    open_state(str(path)).close()
    assert _mode(path) == 0o600
    os.chmod(path, 0o700)  # odd but private: left exactly as the operator set it
    open_state(str(path), create=False).close()
    assert _mode(path) == 0o700


def test_opening_for_reads_never_creates_the_database(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ductile.db"
    with pytest.raises(StateError) as info:
        open_state(str(path), create=False)
    line = info.value.one_line()
    assert str(path) in line and "does not exist" in line and "fix:" in line
    assert not path.parent.exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a regular file"):
        open_state(str(tmp_path))


def test_nested_blocks_join_one_transaction(tmp_path: Path) -> None:
    with open_state(str(tmp_path / "ductile.db")) as db:
        with pytest.raises(RuntimeError, match="boom"), db.write():
            db.jobs.enqueue("echo", "poll", {}, max_attempts=1)
            db.events.record_event("echo.done", {})
            raise RuntimeError("boom")
        assert db.jobs.list_jobs() == [] and db.events.list_events() == []
        with db.write():
            db.jobs.enqueue("echo", "poll", {}, max_attempts=1)
            db.events.record_event("echo.done", {})
        assert len(db.jobs.list_jobs()) == 1 and len(db.events.list_events()) == 1


def test_a_write_cannot_nest_in_a_read(tmp_path: Path) -> None:
    with open_state(str(tmp_path / "ductile.db")) as db, db.read(), pytest.raises(RuntimeError):
        db.jobs.enqueue("echo", "poll", {}, max_attempts=1)


def test_threads_share_one_database(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with open_state(str(tmp_path / "ductile.db")) as db:
        def work(n: int) -> None:
            try:
                for i in range(20):
                    db.jobs.enqueue(f"p{n}", "poll", {"i": i}, max_attempts=1)
                    db.jobs.queue_depth()
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert db.jobs.queue_depth() == 160


def test_a_closed_database_refuses_use(tmp_path: Path) -> None:
    db = open_state(str(tmp_path / "ductile.db"))
    db.close()
    with pytest.raises(StateError, match="closed"):
        db.jobs.queue_depth()


def test_sqlite_errors_become_one_line_state_errors(tmp_path: Path) -> None:
    with open_state(str(tmp_path / "ductile.db")) as db:
        with pytest.raises(StateError) as info, db.write() as conn:
            conn.execute("INSERT INTO jobs (id) VALUES ('x')")  # NOT NULL columns missing
        assert "\n" not in info.value.one_line() and "NOT NULL" in info.value.one_line()
        assert db.jobs.queue_depth() == 0  # rolled back, and the connection is usable again
