"""Faults under a running gateway, injected for real: a disk that fills up mid-job, a
read-only mount, a plugin directory and an age key that disappear. The gateway must keep
every outcome, say ``degraded`` and why, log each cause once (with a count) rather than
once per request, and carry on by itself when the cause goes away."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_ductile
from faultworld import fill, remount, tmpfs
from servehelp import ECHO, PY, ServeWorld, make_serve_world, wait_for

TOKEN = "fault-token-" + "f5" * 16

# Marks that it started, then answers only once the test lets it (no sleeps, no timing).
GATE = f'''\
    #!{PY}
    import json, os, sys, time
    req = json.load(sys.stdin)
    p = req["payload"]
    open(p["started"], "w").write(req["job_id"])
    deadline = time.monotonic() + 300
    while not os.path.exists(p["go"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    json.dump({{"status": "ok", "result": {{"gated": True}}, "state_updates": {{"last": req["job_id"]}}}}, sys.stdout)
'''


def _config(workers: int = 2) -> str:
    return textwrap.dedent(f"""\
        service: {{unconfined: true, max_workers: {workers}, shutdown_timeout: 10s, kill_grace: 1s}}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{{name: ops, secret_ref: api-ops, scopes: ["*"]}}]
        plugins:
          gate: {{retry: {{max_attempts: 1}}}}
          echo: {{retry: {{max_attempts: 1}}}}
        """)


def _health(w: ServeWorld) -> dict:  # type: ignore[type-arg]
    status, body = w.request("GET", "/healthz")
    assert status == 200, body
    return dict(body)


def _degraded(w: ServeWorld, cause: str) -> dict | None:  # type: ignore[type-arg]
    body = _health(w)
    found = [r for r in body.get("degraded", []) if r["cause"] == cause]
    return found[0] if body["status"] == "degraded" and found else None


def _truncate_wal(db: Path) -> None:
    """Checkpoint and cut the WAL to zero bytes, so the next commit must allocate new blocks."""
    def done() -> bool:
        conn = sqlite3.connect(db, timeout=30)
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.close()
        return busy == 0

    wait_for("a truncating checkpoint", done)


@pytest.mark.privileged
def test_a_full_disk_mid_job_keeps_the_outcome_and_settles_once_space_returns(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, _config(), {"gate": GATE, "echo": ECHO}, secrets={"api-ops": TOKEN})
    started, go = tmp_path / "started", tmp_path / "go"
    with tmpfs(w.base / "state", size="16m"):
        w.start()
        try:
            job = w.trigger("gate", "poll", {"started": str(started), "go": str(go)}, TOKEN)
            wait_for("the gate plugin to start", started.exists, log=w.log)
            _truncate_wal(w.db)
            filler = fill(w.base / "state")
            go.touch()  # the plugin answers now; its outcome cannot be written
            reason = wait_for("healthz to report the full disk", lambda: _degraded(w, "state:disk_full"), log=w.log)
            assert "df -h" in reason["fix"] and str(w.base / "state") in reason["fix"], reason
            refused = []
            for _ in range(20):
                status, body = w.request("POST", "/plugin/echo/poll", {}, token=TOKEN)
                refused.append(status)
                assert "df -h" in body["fix"], body
            assert refused == [503] * 20
            assert w.job(job, TOKEN)["status"] == "running"  # held by its worker, not lost, not failed
            filler.unlink()  # space is back
            settled = w.wait_job(job, TOKEN)
            assert settled["status"] == "succeeded" and settled["attempt"] == 1, settled
            assert settled["result"] == {"gated": True}
            wait_for("healthz to clear", lambda: _health(w)["status"] == "ok", log=w.log)
            after = w.wait_job(w.trigger("echo", "poll", {"n": 1}, TOKEN), TOKEN)
            assert after["status"] == "succeeded"
        finally:
            code = w.stop()
        db = sqlite3.connect(w.db)
        outcomes = db.execute("SELECT outcome FROM job_attempts WHERE job_id = ?", (job,)).fetchall()
        state = db.execute("SELECT state FROM plugin_state WHERE plugin = 'gate'").fetchone()[0]
        db.close()
    assert code == 0, w.log()[-3000:]
    assert outcomes == [("succeeded",)] and job in state  # ran once; its state update kept
    log = w.log()
    lines = [ln for ln in log.splitlines() if "degraded:" in ln]
    # 20 refused triggers and every failed write of the outcome: one cause, logged once (with a count)
    assert 1 <= len(lines) <= 2, "\n".join(lines)
    assert "recovered: state:disk_full" in log


@pytest.mark.privileged
def test_serve_on_a_read_only_mount_names_the_mount_and_boots_after_the_printed_fix(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, _config(), {"echo": ECHO}, secrets={"api-ops": TOKEN})
    with tmpfs(w.base / "state", size="16m") as state:
        w.start()
        w.wait_job(w.trigger("echo", "poll", {}, TOKEN), TOKEN)
        assert w.stop() == 0
        remount(state, "ro")
        proc = run_ductile("serve", "--config", str(w.etc))
        line = assert_one_line_error(proc, "read-only")
        assert "run ductile as" not in line and "writable by uid" not in line, line
        fix = re.search(r"\((mount -o remount,rw [^)]+)\)", line)
        assert fix is not None, line
        assert run_ductile("job", "list", "--config", str(w.etc)).returncode == 1
        subprocess.run(fix.group(1).split(), check=True)
        w.start()
        assert w.wait_job(w.trigger("echo", "poll", {}, TOKEN), TOKEN)["status"] == "succeeded"
        assert w.stop() == 0


@pytest.mark.privileged
def test_a_full_disk_under_a_vault_command_is_one_line_with_the_space_fix(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "config.yaml").write_text(textwrap.dedent("""\
        plugin_roots: [plugins]
        state: {path: state/ductile.db}
        secrets: {age_key_file: secret/age.key, vault_file: state/vault.age}
        """))
    with tmpfs(tmp_path / "secret", size="1m") as secret:
        fill(secret)
        proc = run_ductile("vault", "init", "--config", str(tmp_path))
    line = assert_one_line_error(proc, "full", "df -h")
    assert "internal error" not in line


@pytest.fixture
def gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = make_serve_world(tmp_path, _config(), {"gate": GATE, "echo": ECHO}, secrets={"api-ops": TOKEN})
    w.start()
    yield w
    w.kill()


def test_gateway_faults_defer_jobs_show_degraded_and_clear_without_a_restart(gw: ServeWorld) -> None:
    w = gw
    plugin_dir = w.plugins / "echo"
    moved = w.base / "echo.moved"
    shutil.move(str(plugin_dir), str(moved))
    job = w.trigger("echo", "poll", {"n": 1}, TOKEN)
    reason = wait_for("healthz to report the missing plugin", lambda: _degraded(w, "plugin:echo"), log=w.log)
    assert str(plugin_dir) in reason["message"] and "missing" in reason["message"], reason
    assert "check the #! line" not in reason["fix"] and "restore" in reason["fix"]
    queued = w.job(job, TOKEN)
    assert queued["status"] == "queued" and queued["attempt"] == 0, queued  # deferred, attempt not charged
    assert queued["attempts"][0]["outcome"] == "deferred"
    shutil.move(str(moved), str(plugin_dir))
    done = w.wait_job(job, TOKEN)
    assert done["status"] == "succeeded" and done["attempt"] == 1
    wait_for("healthz to clear", lambda: _health(w)["status"] == "ok", log=w.log)

    key = w.etc / "secret" / "age.key"
    key_moved = w.base / "age.key.moved"
    shutil.move(str(key), str(key_moved))  # a key moved away: the gateway cannot compose secrets
    job = w.trigger("echo", "poll", {"n": 2}, TOKEN)
    reason = wait_for("healthz to report the vault", lambda: _degraded(w, "plugin:echo"), log=w.log)
    assert "age key does not exist" in reason["message"] and str(key) in reason["message"], reason
    assert w.job(job, TOKEN)["status"] == "queued"
    shutil.move(str(key_moved), str(key))
    assert w.wait_job(job, TOKEN)["status"] == "succeeded"
    wait_for("healthz to clear", lambda: _health(w)["status"] == "ok", log=w.log)
    assert w.stop() == 0
