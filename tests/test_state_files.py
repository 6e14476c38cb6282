"""No silent re-creation, no quiet migration, no second name: what ``open_state`` refuses,
and the fix each refusal prints — run here, to prove it is true."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_ductile

from ductile.errors import StateError
from ductile.state import db as dbmod
from ductile.state import faults, open_state
from ductile.state.schema import APPLICATION_ID, MIGRATIONS


@pytest.fixture
def world(tmp_path: Path) -> Path:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "config.yaml").write_text("plugin_roots: [plugins]\nstate: {path: state/ductile.db}\n")
    return tmp_path


def _db(world: Path) -> Path:
    return world / "state" / "ductile.db"


def _fix(line: str) -> str:
    return line.split("(fix: ", 1)[1].rsplit(")", 1)[0]


@pytest.mark.parametrize("content,needle", [(b"", "is empty (0 bytes)"),
                                            (b"not a database, just text\n" * 50, "is not an SQLite database")])
def test_an_empty_or_foreign_file_is_refused_by_readers_and_writers_and_left_alone(world: Path, content: bytes,
                                                                                    needle: str) -> None:
    path = _db(world)
    path.write_bytes(content)
    for create in (True, False):
        with pytest.raises(StateError) as info:
            open_state(str(path), create=create)
        line = info.value.one_line()
        assert str(path) in line and needle in line and "restore the file from a backup" in line, line
        assert info.value.cause == "not_a_database" and not info.value.transient
    assert path.read_bytes() == content  # nothing replaced it
    assert sorted(os.listdir(path.parent)) == ["ductile.db"]
    proc = run_ductile("job", "list", "--config", str(world))
    assert_one_line_error(proc, str(path), needle)
    assert path.read_bytes() == content


def test_the_printed_move_aside_fix_works(world: Path) -> None:
    path = _db(world)
    path.write_bytes(b"")
    with pytest.raises(StateError) as info:
        open_state(str(path))
    command = _fix(info.value.one_line()).split("move it aside: ", 1)[1]
    subprocess.run(["sh", "-c", command], check=True)
    assert (path.parent / "ductile.db.damaged").exists()
    with open_state(str(path)) as db:
        assert db.schema_version() == len(MIGRATIONS)


def test_a_second_hard_link_is_refused(world: Path) -> None:
    path = _db(world)
    open_state(str(path)).close()
    other = world / "elsewhere.db"
    os.link(path, other)
    for p in (path, other):
        with pytest.raises(StateError, match="2 hard links") as info:
            open_state(str(p))
        assert "find / -xdev -samefile" in info.value.fix
    os.unlink(other)  # what the fix says: keep one name
    open_state(str(path)).close()


def test_a_stale_wal_without_its_database_is_refused(world: Path) -> None:
    path = _db(world)
    Path(str(path) + "-wal").write_bytes(b"x" * 100)
    with pytest.raises(StateError, match="-wal exists but its database") as info:
        open_state(str(path))
    assert not path.exists()
    subprocess.run(["sh", "-c", info.value.fix.split("move it aside: ", 1)[1]], check=True)
    open_state(str(path)).close()


def test_a_crash_while_creating_leaves_no_file_at_the_path(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _db(world)

    def boom(self: dbmod.StateDB) -> int:
        raise RuntimeError("killed during the first migration")

    monkeypatch.setattr(dbmod.StateDB, "migrate", boom)
    with pytest.raises(RuntimeError):
        open_state(str(path))
    assert os.listdir(path.parent) == []  # no empty ductile.db, no temp files
    monkeypatch.undo()
    with open_state(str(path)) as db:
        assert db.schema_version() == len(MIGRATIONS)
    assert sorted(os.listdir(path.parent)) in (["ductile.db"], ["ductile.db", "ductile.db-shm", "ductile.db-wal"])


def _old_database(path: Path, version: int) -> None:
    """A database as an older release left it: the first ``version`` migrations only."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for step in MIGRATIONS[:version]:
        for statement in step:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.close()


def test_read_commands_never_migrate_and_say_which_command_does(world: Path) -> None:
    path = _db(world)
    _old_database(path, len(MIGRATIONS) - 1)
    proc = run_ductile("job", "list", "--config", str(world))
    line = assert_one_line_error(proc, "older than this ductile", "ductile serve")
    assert f"schema version {len(MIGRATIONS) - 1}" in line
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) - 1  # untouched
    conn.close()
    with open_state(str(path)) as db:  # what serve does at boot
        assert db.schema_version() == len(MIGRATIONS)
    proc = run_ductile("job", "list", "--config", str(world))
    assert proc.returncode == 0 and proc.stdout.strip() == "no jobs", proc.stderr


def test_a_reader_changes_nothing(world: Path) -> None:
    path = _db(world)
    with open_state(str(path)) as db:
        db.jobs.enqueue("echo", "poll", {}, max_attempts=1)
    os.chmod(path, 0o640)
    reader = open_state(str(path), create=False)
    try:
        assert len(reader.jobs.list_jobs()) == 1
        with pytest.raises(StateError, match="opened read-only"):
            reader.jobs.enqueue("echo", "poll", {}, max_attempts=1)
    finally:
        reader.close()
    assert path.stat().st_mode & 0o777 == 0o640  # a reader does not even tighten modes


def _corrupt(path: Path) -> None:
    """Overwrite the middle pages of a database with garbage (what a bad disk or copy does)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(4096 * 2)
        fh.write(b"\xde\xad\xbe\xef" * ((size - 4096 * 2) // 4))


def test_serve_runs_quick_check_and_refuses_a_damaged_database(world: Path) -> None:
    path = _db(world)
    with open_state(str(path)) as db:
        for i in range(300):
            db.jobs.enqueue("echo", "poll", {"i": i, "pad": "x" * 200}, max_attempts=1)
        db.checkpoint()
    _corrupt(path)
    with pytest.raises(StateError) as info:
        reopened = open_state(str(path))
        try:
            reopened.quick_check()
        finally:
            reopened.close()
    assert info.value.cause in ("corrupt", "not_a_database")
    assert "restore the file from a backup" in info.value.fix and "writable by uid" not in info.value.fix
    proc = run_ductile("serve", "--config", str(world))
    line = assert_one_line_error(proc, str(path))
    assert "restore the file from a backup" in line and "writable by uid" not in line
    subprocess.run(["sh", "-c", _fix(line).split("move it aside: ", 1)[1]], check=True)
    with open_state(str(path)) as db:
        db.quick_check()
        assert db.jobs.list_jobs() == []


def test_fix_texts_follow_the_cause() -> None:
    facts = faults.FsFacts("/var/lib/ductile/ductile.db", "/var", False, 0, 990, 990,
                           ("/var/lib/ductile/ductile.db-wal",))
    table = {
        ("SQLITE_FULL", "database or disk is full"): ("disk_full", "df -h /var/lib/ductile"),
        ("SQLITE_NOTADB", "file is not a database"): ("not_a_database", "restore the file from a backup"),
        ("SQLITE_CORRUPT", "database disk image is malformed"): ("corrupt", "mv /var/lib/ductile/ductile.db-wal"),
        ("SQLITE_BUSY", "database is locked"): ("locked", "fuser -v"),
        ("SQLITE_IOERR_WRITE", "disk I/O error"): ("io", "dmesg"),
        ("SQLITE_READONLY", "attempt to write a readonly database"): ("permission", "run ductile as uid 990"),
        (None, "database disk image is malformed"): ("corrupt", "restore"),
    }
    for (name, text), (cause, needle) in table.items():
        fault = faults.diagnose(faults.cause_of_sqlite(name, text), text, facts)
        assert fault.cause == cause and needle in fault.fix, (name, fault)
    ro = faults.FsFacts("/var/lib/ductile/ductile.db", "/var", True, 10, 990, 990)
    fault = faults.diagnose("read_only", "attempt to write a readonly database", ro)
    assert "mount -o remount,rw /var" in fault.fix and fault.transient
    assert faults.cause_of_errno(28) == "disk_full" and faults.cause_of_errno(30) == "read_only"
    damaged = faults.diagnose("corrupt", "x", facts)
    assert not damaged.transient and "writable" not in damaged.fix


def test_a_kill_inside_the_first_creation_leaves_nothing_a_writer_cannot_clean(world: Path) -> None:
    path = _db(world)
    open_state(str(path)).close()
    leftover = path.parent / ".ductile.db.init-0123456789ab"
    os.link(path, leftover)  # killed between linking the new database into place and unlinking its temp name
    with pytest.raises(StateError, match="2 hard links"):
        open_state(str(path), create=False)  # a reader changes nothing, so it refuses
    open_state(str(path)).close()  # a writer recognises its own temp name and drops it
    assert not leftover.exists() and path.stat().st_nlink == 1
