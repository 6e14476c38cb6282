"""Secrets reach a confined plugin only over stdin, exactly as granted, and nowhere else:
not argv, not env (of plugin or gateway), not logs, not the state DB, not --json output."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from wallworld import World, destroy, make_world, require_root

pytestmark = pytest.mark.privileged

SNOOP_PLUGIN = textwrap.dedent('''\
    #!/usr/bin/python3
    """Reports the secrets it got and whether any value shows up in argv/env of itself or its parent."""
    import json, os, sys, time
    req = json.load(sys.stdin)
    got = req.get("secrets") or {}
    def read(path):
        try:
            return open(path, "rb").read()
        except OSError as e:
            return b"<" + str(e.errno).encode() + b">"
    places = {"own environ": read("/proc/self/environ"), "own cmdline": read("/proc/self/cmdline"),
              "gateway cmdline": read(f"/proc/{os.getppid()}/cmdline")}
    leaks = sorted(where for where, data in places.items() for v in got.values() if v.encode() in data)
    marker = (req.get("payload") or {}).get("pidfile")
    if marker:
        open(marker, "w").write(str(os.getppid()))
        time.sleep(1.5)  # give the test time to read the gateway's /proc entries
    json.dump({"status": "ok", "result": {"names": sorted(got), "leaks": leaks}}, sys.stdout)
''')


@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted"],
                   {"snoop": "{run_as: default}", "keyed": "{run_as: default, requires_vault: true, vault_principal: nobody-here}"},
                   {"snoop": SNOOP_PLUGIN, "keyed": SNOOP_PLUGIN})
    w.values = {"api-key": "v1-" + secrets.token_hex(16), "db-pass": "v2-" + secrets.token_hex(16),  # type: ignore[attr-defined]
                "other": "v3-" + secrets.token_hex(16)}
    drop = w.base / "drop"  # where the snoop plugin may leave the gateway's pid (its Landlock write rule)
    drop.mkdir(mode=0o1777)
    os.chmod(drop, 0o1777)
    w.plugins["snoop"] = f"{{run_as: default, filesystem: {{write: [{drop}]}}}}"
    w.write_config()
    for args, value in [(("principal", "add", "snoop"), None), (("principal", "add", "stranger"), None),
                        (("set", "api-key", "--grant", "snoop"), w.values["api-key"]),  # type: ignore[attr-defined]
                        (("set", "db-pass", "--grant", "snoop"), w.values["db-pass"]),  # type: ignore[attr-defined]
                        (("set", "other", "--grant", "stranger"), w.values["other"])]:  # type: ignore[attr-defined]
        proc = vault_cli(w, *args, input=value)
        assert proc.returncode == 0, proc.stderr
    yield w
    destroy(w)


def vault_cli(w: World, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return w.run("vault", *args, input=input)


def test_confined_plugin_receives_exactly_its_grants(world: World) -> None:
    proc = world.plugin_run("snoop", {})
    out = json.loads(proc.stdout)
    assert out["outcome"]["result"]["names"] == ["api-key", "db-pass"]
    assert out["outcome"]["result"]["leaks"] == []
    assert out["secrets_delivered"] == ["api-key", "db-pass"]


def test_values_never_leave_stdin(world: World) -> None:
    pidfile = world.base / "drop" / "gateway.pid"
    seen: dict[str, bytes] = {}

    def watch() -> None:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = pidfile.read_text().strip()
        for name in ("environ", "cmdline"):
            seen[name] = Path(f"/proc/{pid}/{name}").read_bytes()

    t = threading.Thread(target=watch)
    t.start()
    proc = world.plugin_run("snoop", {"pidfile": str(pidfile)})
    t.join()
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "succeeded" and out["outcome"]["result"]["leaks"] == []
    assert seen, "never saw the gateway's /proc entries"
    db_bytes = b"".join(p.read_bytes() for p in world.db.parent.glob("ductile.db*"))
    for value in world.values.values():  # type: ignore[attr-defined]
        v = value.encode()
        assert v not in seen["environ"] and v not in seen["cmdline"]
        assert value not in proc.stdout and value not in proc.stderr
        assert v not in db_bytes
    audit = vault_cli(world, "audit", "--json")
    assert audit.returncode == 0 and not any(v in audit.stdout for v in world.values.values())  # type: ignore[attr-defined]


def test_requires_vault_with_unknown_principal_fails_closed_and_is_audited(world: World) -> None:
    proc = world.plugin_run("keyed", {})
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "failed" and out["outcome"]["terminal"] is True
    assert out["outcome"]["error"]["kind"] == "vault_principal_required"
    assert out["pid"] is None  # nothing was spawned
    rows = json.loads(vault_cli(world, "audit", "--json", "--principal", "nobody-here").stdout)
    assert rows and rows[0]["outcome"] == "refused" and rows[0]["op"] == "compose_refused"


def test_state_db_rows_never_hold_values(world: World) -> None:
    world.plugin_run("snoop", {})
    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    for value in world.values.values():  # type: ignore[attr-defined]
        assert value not in dump
