"""``ductile system`` against a real running gateway: status over the control channel (and
a stranger kept off it), a backup taken while jobs run is consistent, restore refuses to
replace a database a gateway holds, and backup -> wipe -> restore -> serve carries on with
the same jobs, plugin state, vault and locks."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_ductile
from servehelp import PY, ServeWorld, make_serve_world, wait_for
from wallworld import free_ids, require_root

from ductile.control import socket_path

pytestmark = pytest.mark.privileged
OPS = "ops-token-" + "d4" * 16

COUNTER = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    n = (req.get("state") or {{}}).get("count", 0) + 1
    json.dump({{"status": "ok", "result": {{"count": n}}, "state_updates": {{"count": n}}}}, sys.stdout)
'''
SLOW = f'''\
    #!{PY}
    import json, sys, time
    json.load(sys.stdin)
    time.sleep(0.05)
    json.dump({{"status": "ok", "result": "done"}}, sys.stdout)
'''
CONFIG = """\
    service: {unconfined: true, max_workers: 2, shutdown_timeout: 10s}
    plugins:
      counter: {}
      slow: {retry: {max_attempts: 1}}
    api:
      listen: 127.0.0.1:@PORT@
      tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
"""


def cli(world: ServeWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ductile(*args, "--config", str(world.etc), cwd="/")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeWorld]:
    require_root()
    w = make_serve_world(tmp_path_factory.mktemp("system"), CONFIG, {"counter": COUNTER, "slow": SLOW},
                         secrets={"api-ops": OPS})
    preview = cli(w, "plugin", "lock", "--all", "--json")
    assert preview.returncode == 0, preview.stderr
    assert cli(w, "plugin", "lock", "--all", json.loads(preview.stdout)["code"]).returncode == 0
    w.start()
    yield w
    w.kill()


def test_status_asks_the_running_gateway(world: ServeWorld) -> None:
    job = world.wait_job(world.trigger("counter", "poll", {}, OPS), OPS)
    assert job["status"] == "succeeded"
    proc = cli(world, "system", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["answered"] and report["pid"] == world.proc.pid  # type: ignore[union-attr]
    assert report["posture"] == "unconfined" and "posture=unconfined" in report["posture_line"]
    assert report["last_job"]["id"] == job["id"] and report["last_job"]["status"] == "succeeded"
    assert report["rss_bytes"] > 1024 * 1024 and report["uptime_seconds"] >= 0
    assert isinstance(report["queue_depth"], int) and report["api"].startswith("127.0.0.1:")
    human = cli(world, "system", "status")
    assert human.returncode == 0 and f"pid {world.proc.pid}" in human.stdout  # type: ignore[union-attr]
    sock = os.lstat(socket_path(str(world.db)))
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == os.geteuid()


STRANGER = textwrap.dedent("""\
    import json, sys
    from ductile.control import ControlError, ask
    try:
        print(json.dumps({"answer": ask(sys.argv[1], "status")}))
    except ControlError as err:
        print(json.dumps({"reason": err.reason, "error": err.message}))
""")


def test_a_stranger_is_kept_off_the_control_channel_even_if_its_mode_is_loosened(world: ServeWorld) -> None:
    import tempfile

    uid = free_ids(1)[0]
    reach = Path(tempfile.mkdtemp(prefix="ductile-ctl-", dir="/tmp"))
    os.chmod(reach, 0o755)
    path = reach / "gateway.sock"
    os.link(socket_path(str(world.db)), path)  # the same socket, somewhere the stranger can reach
    try:
        def ask_as_stranger() -> dict:  # type: ignore[type-arg]
            proc = subprocess.run([sys.executable, "-c", STRANGER, str(path)], capture_output=True, text=True,
                                  user=uid, group=uid, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"})
            assert proc.returncode == 0, proc.stderr
            return dict(json.loads(proc.stdout))

        assert ask_as_stranger()["reason"] == "denied"  # the socket's mode, 0600, stops the connect
        os.chmod(path, 0o666)  # loosened by mistake: the gateway still checks the kernel's peer uid
        refused = ask_as_stranger()
        assert refused["reason"] == "refused" and f"uid {uid} may not use" in refused["error"]
        assert "answer" not in refused
    finally:
        os.chmod(path, 0o600)
        shutil.rmtree(reach)


def test_a_backup_taken_while_jobs_run_is_consistent(world: ServeWorld, tmp_path: Path) -> None:
    ids = [world.trigger("slow", "poll", {"i": i}, OPS) for i in range(120)]
    snapshots = []
    for n in range(3):
        proc = cli(world, "system", "backup", "--scope", "db", "--to", str(tmp_path / f"{n}.tgz"), "--json")
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(tmp_path / f"{n}.tgz", "r:gz") as tar:
            member = tar.extractfile(f"db/{world.db.name}")
            assert member is not None
            (tmp_path / f"{n}.db").write_bytes(member.read())
        conn = sqlite3.connect(tmp_path / f"{n}.db")
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        snapshots.append(dict(conn.execute("SELECT status, count(*) FROM jobs WHERE plugin = 'slow' GROUP BY status")
                              .fetchall()))
        conn.close()
    for job_id in ids:
        world.wait_job(job_id, OPS)
    # at least one snapshot caught the queue mid-flight: the gateway was really writing meanwhile
    assert any(s.get("queued", 0) + s.get("running", 0) > 0 for s in snapshots), snapshots


def test_restore_refuses_to_replace_the_database_of_a_running_gateway(world: ServeWorld, tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    assert cli(world, "system", "backup", "--scope", "plugins", "--to", str(archive)).returncode == 0
    world.wait_job(world.trigger("counter", "poll", {}, OPS), OPS)  # the live database moves on
    before = sorted(os.listdir(world.base / "state")) + sorted(os.listdir(world.etc))
    proc = run_ductile("system", "restore", str(archive), "--force", cwd="/")
    assert_one_line_error(proc, f"pid {world.proc.pid}", "running gateway", "stop the gateway")  # type: ignore[union-attr]
    assert sorted(os.listdir(world.base / "state")) + sorted(os.listdir(world.etc)) == before
    assert world.proc is not None and world.proc.poll() is None


def test_backup_wipe_restore_and_serve_carries_on(world: ServeWorld, tmp_path: Path) -> None:
    count = world.wait_job(world.trigger("counter", "poll", {}, OPS), OPS)["result"]["count"]
    status, listing = world.request("GET", "/jobs?limit=1000", token=OPS)
    assert status == 200
    jobs_before = {j["id"]: j["status"] for j in listing["jobs"]}
    assert world.stop() == 0
    archive = tmp_path / "before-the-fire.tgz"
    made = cli(world, "system", "backup", "--scope", "plugins", "--to", str(archive), "--json")
    assert made.returncode == 0, made.stderr
    code = json.loads(made.stdout)["backup_uid"]

    key = (world.etc / "secret" / "age.key").read_bytes()  # the operator's offline copy
    for d in ("etc", "state", "plugins"):
        shutil.rmtree(world.base / d)

    restored = run_ductile("system", "restore", str(archive), "--json", cwd="/")
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert any(f"pairing code is {code}" in s and "put the age key back" in s for s in report["next_steps"])
    vault_check = next(c for c in report["checks"]["selfcheck"]["checks"] if c["check"] == "vault")
    assert vault_check["status"] == "problem"  # no key yet: said, not hidden
    assert not (world.etc / "secret").exists()

    (world.etc / "secret").mkdir(mode=0o700)
    (world.etc / "secret" / "age.key").write_bytes(key)
    os.chmod(world.etc / "secret" / "age.key", 0o600)
    check = cli(world, "system", "selfcheck", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert {c["check"]: c["status"] for c in json.loads(check.stdout)["checks"]} == {
        "database": "ok", "schema": "ok", "jobs": "ok", "vault": "ok", "locks": "ok"}
    listed = json.loads(cli(world, "plugin", "list", "--json").stdout)
    assert {p["name"]: p["lock"] for p in listed["plugins"]} == {"counter": "locked", "slow": "locked"}
    again = json.loads(run_ductile("system", "restore", str(archive), "--json", cwd="/").stdout)  # key in place now
    assert again["ok"] and all(s["action"] in ("same", "exists") for s in again["steps"])
    assert {c["check"]: c["status"] for c in again["checks"]["selfcheck"]["checks"]}["locks"] == "ok"
    assert any(f"has pairing code {code}: it is the key" in s for s in again["next_steps"])

    world.start()
    status, listing = world.request("GET", "/jobs?limit=1000", token=OPS)  # the API token came back with the vault
    assert status == 200 and {j["id"]: j["status"] for j in listing["jobs"]} == jobs_before
    after = world.wait_job(world.trigger("counter", "poll", {}, OPS), OPS)
    assert after["status"] == "succeeded" and after["result"]["count"] == count + 1  # plugin state carried on
    assert world.stop() == 0


def test_status_and_selfcheck_when_no_gateway_runs(world: ServeWorld) -> None:
    wait_for("the gateway to be stopped", lambda: world.proc is None or world.proc.poll() is not None)
    proc = cli(world, "system", "status", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["running"] is False
    conn = sqlite3.connect(world.db)
    conn.execute("UPDATE jobs SET status = 'running' WHERE id = (SELECT id FROM jobs LIMIT 1)")
    conn.commit()
    conn.close()
    check = cli(world, "system", "selfcheck")
    assert check.returncode == 1 and "no gateway is alive" in check.stdout
    assert "ductile serve" in check.stdout


def test_archive_streams_are_gzip_tar_with_the_manifest_first(tmp_path: Path, world: ServeWorld) -> None:
    proc = cli(world, "system", "backup", "--scope", "config", "--to", str(tmp_path / "c.tgz"))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "c.tgz", "r:gz") as tar:
        names = tar.getnames()
        manifest = tar.extractfile("BACKUP_MANIFEST.txt")
        assert manifest is not None and b"kind: ductile-backup" in io.BytesIO(manifest.read()).getvalue()
    assert names[:2] == ["BACKUP_MANIFEST.txt", "uid.txt"]
