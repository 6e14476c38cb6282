"""``ductile system selfcheck``: is the state this config names sound? Read-only.

    database   the file exists and ``PRAGMA integrity_check`` says ok
    schema     ductile's database (application id) at this release's schema version
    jobs       no job is ``running`` while no gateway is alive to run it
    vault      the vault opens with the configured age key
    locks      every configured plugin still matches its lock (``ductile.lock.lock_states``)

Each check is ok, a problem (exit 1), or skipped with the reason — a check that could not
run is never reported as a pass. The database is opened read-only (``mode=ro``), so
selfcheck never migrates, creates or repairs anything.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from urllib.parse import quote

from ductile.config import LoadedConfig
from ductile.errors import DuctileError
from ductile.state.instance import InstanceLock
from ductile.state.schema import APPLICATION_ID, MIGRATIONS


@dataclass(frozen=True)
class Check:
    name: str
    status: str        # ok | problem | skip
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _database(path: str) -> tuple[list[Check], sqlite3.Connection | None]:
    if not os.path.isfile(path):
        return [Check("database", "problem", f"{path} does not exist",
                      "check state.path; start `ductile serve` once to create it, or restore a backup "
                      "(ductile system restore)")], None
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(10)")]
    except sqlite3.Error as err:
        return [Check("database", "problem", f"{path} cannot be read as SQLite: {err}",
                      "restore the last good archive (ductile system restore ARCHIVE)")], None
    if rows != ["ok"]:
        return [Check("database", "problem", f"PRAGMA integrity_check: {'; '.join(rows)[:300]}",
                      "stop the gateway and restore the last good archive (ductile system restore ARCHIVE)")], conn
    return [Check("database", "ok", f"{path}: PRAGMA integrity_check ok")], conn


def _schema(conn: sqlite3.Connection) -> Check:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    target = len(MIGRATIONS)
    if app_id != APPLICATION_ID:
        return Check("schema", "problem", f"application_id {app_id:#x} is not ductile's ({APPLICATION_ID:#x})",
                     "point state.path at ductile's database")
    if version > target:
        return Check("schema", "problem", f"schema version {version} is newer than this ductile's ({target})",
                     "upgrade ductile to the release that wrote it")
    if version < target:
        return Check("schema", "problem", f"schema version {version} is older than this ductile's ({target})",
                     "start `ductile serve` once: it migrates the database at boot")
    return Check("schema", "ok", f"schema version {version} (current)")


def _jobs(conn: sqlite3.Connection, state_path: str) -> Check:
    running = int(conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0])
    holder = InstanceLock.for_state(state_path).holder()
    if holder is not None:
        return Check("jobs", "ok", f"gateway pid {holder} is running; {running} job(s) running under it")
    if running:
        return Check("jobs", "problem", f"{running} job(s) are 'running' but no gateway is alive to run them",
                     "start the gateway (ductile serve): at boot it re-queues them, or marks them dead when "
                     "their attempts are spent")
    return Check("jobs", "ok", "no gateway running and no job left 'running'")


def _needs_vault(loaded: LoadedConfig) -> str | None:
    cfg = loaded.config
    if cfg.api.enabled and cfg.api.tokens:
        return "api.tokens"
    if cfg.webhooks:
        return "webhooks"
    if any(p.requires_vault for p in cfg.plugins.values()):
        return "a plugin with requires_vault: true"
    from ductile.lock import lock_path

    if os.path.exists(lock_path(loaded)):
        return "the plugin lock (.checksums is keyed by the vault's nonce)"
    return None


def _vault(loaded: LoadedConfig) -> Check:
    from ductile.vault.store import VaultStore

    store = VaultStore.from_config(loaded.config.secrets)
    if not store.exists():
        need = _needs_vault(loaded)
        if need:
            return Check("vault", "problem", f"no vault at {store.vault_file}, but {need} needs it",
                         "restore it (ductile system restore ARCHIVE) or create one (ductile vault init)")
        return Check("vault", "skip", f"no vault at {store.vault_file}, and nothing in the config needs one")
    try:
        doc = store.read()
    except DuctileError as err:
        return Check("vault", "problem", err.message, err.fix)
    return Check("vault", "ok", f"{store.vault_file} opens with {store.key_file} "
                                f"({len(doc.principals)} principal(s), {len(doc.secrets)} secret(s))")


def _locks(loaded: LoadedConfig) -> Check:
    from ductile.errors import LockError
    from ductile.lock import lock_path, lock_states, read_lock
    from ductile.plugins.inventory import discover_for_config

    path = lock_path(loaded)
    try:
        entries = read_lock(path)
    except LockError as err:
        return Check("locks", "problem", err.message, err.fix)
    if entries is None:
        return Check("locks", "skip", f"no {path}: locking is not in use")
    discovery = discover_for_config(loaded.config)
    states = lock_states(loaded, discovery)
    configured = sorted(n for n in loaded.config.plugins if loaded.config.plugins[n].enabled)
    bad = [f"{n}: {states.get(n, 'not discovered')}" for n in configured if states.get(n) != "locked"]
    if bad:
        return Check("locks", "problem", "not matching their lock: " + ", ".join(bad),
                     "review the changes, then relock (ductile plugin lock --all)")
    return Check("locks", "ok", f"{len(configured)} enabled plugin(s) match {path}")


def run_selfcheck(loaded: LoadedConfig) -> list[Check]:
    path = loaded.config.state.path
    checks, conn = _database(path)
    if conn is not None:
        try:
            checks.append(_schema(conn))
            try:
                checks.append(_jobs(conn, path))
            except sqlite3.Error as err:
                checks.append(Check("jobs", "problem", f"cannot read the jobs table: {err}",
                                    "start `ductile serve` once to migrate the database"))
        finally:
            conn.close()
    else:
        checks += [Check("schema", "skip", "the database could not be opened"),
                   Check("jobs", "skip", "the database could not be opened")]
    checks.append(_vault(loaded))
    checks.append(_locks(loaded))
    return checks
