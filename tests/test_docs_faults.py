"""docs/deployment.md "Faults and recovery": every block marked ``<!-- tested: NAME -->`` is
run here, line by line, against a world where that fault was injected for real. The FHS
paths are mapped into the world (/etc/ductile -> its config dir, /var/lib/ductile -> its
state dir); ``systemctl start|stop ductile`` start and stop the world's gateway."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, run_ductile
from faultworld import remount, tmpfs
from servehelp import ECHO, ServeWorld, make_serve_world
from test_state_files import _corrupt
from test_vault_custody import CRASHER

from ductile.state import open_state
from ductile.vault.keyfile import read_identity, write_new_key
from ductile.vault.store import VaultStore

TOKEN = "docs-token-" + "d0" * 16
DOC = REPO / "docs" / "deployment.md"


def blocks() -> dict[str, list[str]]:
    text = DOC.read_text()
    section = text.split("## Faults and recovery", 1)[1]
    found = re.findall(r"<!-- tested: (\w+) -->\n```sh\n(.*?)```", section, re.S)
    return {name: [ln for ln in body.splitlines() if ln.strip()] for name, body in found}


def _world(tmp_path: Path) -> ServeWorld:
    return make_serve_world(tmp_path, textwrap.dedent("""\
        service: {unconfined: true, max_workers: 1, shutdown_timeout: 5s}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
        plugins:
          echo: {}
        """), {"echo": ECHO}, secrets={"api-ops": TOKEN})


def run_block(name: str, w: ServeWorld) -> list[subprocess.CompletedProcess[str]]:
    """Run the block's lines as an operator would, in the world; every line must succeed."""
    done = []
    for line in blocks()[name]:
        line = line.replace("/etc/ductile", str(w.etc)).replace("/var/lib/ductile", str(w.base / "state"))
        argv = shlex.split(line)
        if argv[:2] == ["systemctl", "stop"]:
            if w.proc is not None and w.proc.poll() is None:
                assert w.stop() == 0
            continue
        if argv[:2] == ["systemctl", "start"]:
            w.start()
            continue
        if argv[0] == "ductile":
            proc = run_ductile(*argv[1:], env={"DUCTILE_CONFIG_DIR": str(w.etc)})
            ok = proc.returncode in ((0, 1) if argv[1] == "doctor" else (0,))  # doctor: findings elsewhere are fine
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            ok = proc.returncode == 0
        assert ok, (line, proc.returncode, proc.stdout, proc.stderr)
        done.append(proc)
    return done


def test_every_tested_block_exists_and_names_real_commands() -> None:
    found = blocks()
    assert set(found) == {"readonly", "rotation", "hardlink", "damaged"}, set(found)
    for name, lines in found.items():
        for line in lines:
            assert line.split()[0] in ("df", "mount", "ductile", "shred", "unlink", "mv", "systemctl"), (name, line)
            if line.startswith("ductile "):
                assert run_ductile(*line.split()[1:3], "--help").returncode == 0, line  # the subcommand exists


def test_rotation_block(tmp_path: Path) -> None:
    w = _world(tmp_path)
    store = VaultStore(str(w.etc / "secret" / "age.key"), str(w.base / "state" / "vault.age"))
    env = {**os.environ, "CRASH_COUNT": str(tmp_path / "count")}
    for crash_at in range(1, 200):  # kill the rotation at the first step after which it must be finished
        proc = subprocess.run([sys.executable, "-c", CRASHER, "vault", "rotate-key", "--config", str(w.etc)],
                              capture_output=True, text=True, env={**env, "CRASH_AT": str(crash_at)}, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        new = store._identity_at(store.new_key_file)
        if new is not None and store._opens(new, store.vault_file):
            break
        store.recover()
    doctor, recover, listed, _ = run_block("rotation", w)
    assert "ductile vault recover" in doctor.stdout and "finished an interrupted key rotation" in recover.stdout
    assert "api-ops" in listed.stdout
    assert not os.path.exists(store.old_key_file) and not os.path.exists(store.new_key_file)
    assert store.read().secrets["api-ops"].value == TOKEN


def test_hardlink_block(tmp_path: Path) -> None:
    w = _world(tmp_path)
    store = VaultStore(str(w.etc / "secret" / "age.key"), str(w.base / "state" / "vault.age"))
    from pyrage import x25519  # type: ignore[import-untyped]

    old, new = read_identity(store.key_file), x25519.Identity.generate()
    write_new_key(store.new_key_file, new)  # what an interrupted rotation of an earlier release left
    with store.locked():
        store._write(store.read(old), [old.to_public(), new.to_public()], [old, new])
    os.link(store.key_file, store.old_key_file)
    run_block("hardlink", w)
    assert store.read().secrets["api-ops"].value == TOKEN
    assert os.stat(store.key_file).st_nlink == 1 and os.stat(store.old_key_file).st_nlink == 1
    assert str(read_identity(store.old_key_file)) == str(old)  # the old key survived, as a copy


def test_damaged_block(tmp_path: Path) -> None:
    w = _world(tmp_path)
    w.start()
    w.wait_job(w.trigger("echo", "poll", {}, TOKEN), TOKEN)
    with open_state(str(w.db)) as db, db.write():
        for i in range(300):
            db.jobs.enqueue("echo", "poll", {"i": i, "pad": "x" * 200}, max_attempts=1, not_before=4e9)
    assert w.stop() == 0
    _corrupt(w.db)
    refused = run_ductile("serve", "--config", str(w.etc))
    assert refused.returncode == 1 and "restore the file from a backup" in refused.stderr
    try:
        *_, listed = run_block("damaged", w)
        assert listed.stdout.strip() == "no jobs"
        assert (w.base / "state" / "ductile.db.damaged").exists()
    finally:
        w.kill()


@pytest.mark.privileged
def test_readonly_block(tmp_path: Path) -> None:
    w = _world(tmp_path)
    with tmpfs(w.base / "state", size="16m") as state:
        w.start()
        assert w.stop() == 0
        remount(state, "ro")
        refused = run_ductile("serve", "--config", str(w.etc))
        assert refused.returncode == 1 and f"mount -o remount,rw {state}" in refused.stderr
        run_block("readonly", w)
        w.start()
        assert w.wait_job(w.trigger("echo", "poll", {}, TOKEN), TOKEN)["status"] == "succeeded"
        assert w.stop() == 0
