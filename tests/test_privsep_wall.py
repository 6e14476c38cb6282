"""The wall, proven from inside dropped children — as a root gateway and as a cap-only
gateway (non-root, only CAP_SETUID+CAP_SETGID, ambient, as systemd would set it up).
Every test here needs root; under CI a skip is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from wallworld import (HANG_PLUGIN, IS_ROOT, MARKER_PLUGIN, PROBE_PLUGIN, World, destroy, live_processes, make_world,
                       require_root)

from ductile.privsep.env import ALLOWLIST, SET_BY_GATEWAY

pytestmark = pytest.mark.privileged

ZERO = "0000000000000000"
MODES = ["root", "cap-only"]


@pytest.fixture(scope="module", params=MODES)
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted", "sibling"],
                   {"probe": "{run_as: default, timeouts: {poll: 30s}, filesystem: unrestricted}",  # the uid wall alone
                    "hang": "{run_as: untrusted, timeouts: {poll: 1s}}"},
                   {"probe": PROBE_PLUGIN, "hang": HANG_PLUGIN})
    w.mode = request.param  # type: ignore[attr-defined]
    yield w
    destroy(w)


def probe(world: World) -> dict:  # type: ignore[type-arg]
    payload = {"deny": {"age key": str(world.key), "config dir": str(world.etc),
                        "config file": str(world.etc / "config.yaml"), "state DB": str(world.db),
                        "vault": str(world.vault), "sibling dir": str(world.state_dir("sibling")),
                        "sibling file": str(world.state_dir("sibling") / "private.txt")},
               "setuid": [0, world.gateway_uid] if world.gateway_uid else [0]}
    proc = world.plugin_run("probe", payload)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "succeeded", out
    return out


def test_identity_is_exactly_the_account(world: World) -> None:
    out = probe(world)
    r = out["outcome"]["result"]
    u = world.accounts["default"]
    assert r["resuid"] == [u, u, u] and r["resgid"] == [u, u, u]
    assert set(r["groups"]) <= {u}
    assert out["account"]["uid"] == u and out["account"]["name"] == "default"


def test_no_capabilities_and_no_new_privs(world: World) -> None:
    r = probe(world)["outcome"]["result"]
    assert r["caps"] == {"CapInh": ZERO, "CapPrm": ZERO, "CapEff": ZERO, "CapAmb": ZERO}
    assert r["nnp"] == "1"


def test_only_stdio_open_cwd_is_state_dir_umask_077(world: World) -> None:
    r = probe(world)["outcome"]["result"]
    assert r["fds"] == [0, 1, 2]
    assert r["cwd"] == str(world.state_dir("default"))
    assert r["umask"] == 0o077


def test_env_is_exactly_the_allowlist(world: World) -> None:
    env = probe(world)["outcome"]["result"]["env"]
    # the gateway here runs with PATH, LANG, TZ, NO_COLOR: NO_COLOR is not on the list
    assert set(env) == {"PATH", "LANG", "TZ", "HOME", "XDG_CACHE_HOME", "TMPDIR", "PYTHONNOUSERSITE"} | (
        {"LC_CTYPE"} & set(env))
    assert set(env) <= set(ALLOWLIST) | set(SET_BY_GATEWAY) | {"LC_CTYPE"}
    assert env["HOME"] == env["XDG_CACHE_HOME"] == str(world.state_dir("default"))
    assert env["TMPDIR"] == str(world.state_dir("default") / "tmp") and env["PYTHONNOUSERSITE"] == "1"


def test_secrets_and_siblings_are_denied_own_dir_writable(world: World) -> None:
    r = probe(world)["outcome"]["result"]
    assert r["deny"] == {k: "EACCES" for k in r["deny"]}, r["deny"]
    assert r["own"] == "WRITABLE"


def test_regaining_privilege_fails(world: World) -> None:
    r = probe(world)["outcome"]["result"]
    assert r["setuid"] and all(v == "EPERM" for v in r["setuid"].values()), r["setuid"]


def test_stderr_names_the_account_and_uid(world: World) -> None:
    proc = world.plugin_run("probe", {})
    u = world.accounts["default"]
    assert f"uid {u}" in proc.stderr and "default" in proc.stderr


def test_timeout_kills_the_whole_tree(world: World) -> None:
    uid = world.accounts["untrusted"]
    proc = world.plugin_run("hang", {})
    assert proc.returncode != 0
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "timed_out", out
    assert (world.state_dir("untrusted") / "hang-started").exists()
    # orphans are reaped lazily by PID 1; only live (non-zombie) processes count
    deadline = time.monotonic() + 10
    while live_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_processes(uid) == []


# ---- refusals run nothing ---------------------------------------------------------------

def _marker_world(gateway_uid: int | None, accounts: list[str]) -> World:
    return make_world(gateway_uid, accounts, {"mark": "{}"}, {"mark": MARKER_PLUGIN})


@pytest.mark.parametrize("case", ["no-capability-with-accounts", "capability-without-accounts",
                                  "foreign-owned-key", "unprovisioned-account-dir"])
def test_each_refusal_runs_zero_plugins(case: str) -> None:
    require_root()
    gw = 0 if case in ("capability-without-accounts", "foreign-owned-key") else None
    w = _marker_world(gw, [] if case == "capability-without-accounts" else ["default", "untrusted"])
    try:
        marker = w.base / "marker"
        os.chmod(w.base, 0o1777)  # anyone may create the marker, so only the gate can stop it
        kw = {}
        if case == "no-capability-with-accounts":
            kw["caps"] = ""
            needle = "lacks CAP_SETUID/CAP_SETGID"
        elif case == "capability-without-accounts":
            needle = "no accounts are configured"
        elif case == "foreign-owned-key":
            os.chown(w.key, 12345, 12345)
            needle = "the key may have been read"
        else:
            shutil.rmtree(w.state_dir("default"))
            needle = "not provisioned"
        proc = w.plugin_run("mark", {"marker": str(marker)}, **kw)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if case == "unprovisioned-account-dir":  # refuses that account only: the boot succeeds, its job fails
            out = json.loads(proc.stdout)
            assert out["outcome"]["error"]["kind"] == "account_refused" and out["pid"] is None
            assert needle in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
        else:
            assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
        assert not marker.exists(), "a plugin ran although the gate refused"
    finally:
        destroy(w)


def test_unconfined_override_runs_at_gateway_uid() -> None:
    require_root()
    w = _marker_world(None, ["default"])
    try:
        os.chmod(w.base, 0o1777)
        w.extra_config = "service: {unconfined: true, kill_grace: 1s}\n"
        text = w.config_text().replace("service: {kill_grace: 1s}\n", "", 1)
        (w.etc / "config.yaml").write_text(text)
        proc = w.plugin_run("mark", {"marker": str(w.base / "marker")}, caps="")
        assert proc.returncode == 0, proc.stderr
        assert (w.base / "marker").stat().st_uid == w.gateway_uid
        assert "unconfined" in proc.stderr
    finally:
        destroy(w)


# ---- regression guards for the footguns ---------------------------------------------------

@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_omitting_extra_groups_would_leak_the_gateways_groups() -> None:
    """Keep ``extra_groups=[]``: without it the child keeps every supplementary group."""
    code = (
        "import os, subprocess, sys\n"
        "os.setgroups([0, 4, 27])\n"
        "leak = subprocess.run([sys.executable, '-c', 'import os; print(os.getgroups())'], user=61999, group=61999,"
        " capture_output=True, text=True).stdout.strip()\n"
        "kept = subprocess.run([sys.executable, '-c', 'import os; print(os.getgroups())'], user=61999, group=61999,"
        " extra_groups=[], capture_output=True, text=True).stdout.strip()\n"
        "print(leak, '|', kept)\n"
    )
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    leak, kept = [s.strip() for s in out.split("|")]
    assert leak == "[0, 4, 27]" and kept == "[]"


def test_spawn_spec_passes_extra_groups() -> None:
    """The launcher must hand Popen an explicit (empty) extra_groups for every drop."""
    from ductile.runtime.launch import drop_kwargs

    assert drop_kwargs(61001, 61001) == {"user": 61001, "group": 61001, "extra_groups": []}
    assert drop_kwargs(None, None) == {}


# ---- spawn failures are told apart --------------------------------------------------------

def test_drop_refused_is_account_drop_failed_and_terminal() -> None:
    """A gateway without the capability that tries anyway gets EPERM before exec."""
    require_root()
    code = (
        "import json\n"
        "from ductile.config.model import ServiceConfig\n"
        "from ductile.privsep.accounts import ResolvedAccount\n"
        "from ductile.privsep.spawnspec import build_spawn_spec\n"
        "from ductile.runtime.spawn import spawn\n"
        "from ductile.errors import DuctileError\n"
        "spec = build_spawn_spec(ResolvedAccount('a', 61998, 61998, '/tmp', 'granted'), '/bin/true', ServiceConfig(), {},"
        " timeout=5, unconfined_workdir='/')\n"
        "try:\n"
        "    spawn(spec, b'{}')\n"
        "    print(json.dumps({'kind': None}))\n"
        "except DuctileError as err:\n"
        "    print(json.dumps({'kind': err.kind, 'terminal': err.terminal, 'line': err.one_line()}))\n"
    )
    proc = subprocess.run(["setpriv", "--reuid=61997", "--regid=61997", "--clear-groups", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd="/", timeout=60)
    out = json.loads(proc.stdout)
    assert out["kind"] == "drop_failed" and out["terminal"] is True
    assert "refused the drop to uid 61998" in out["line"] and "CAP_SETUID" in out["line"]


def test_unreachable_state_dir_is_named_as_such(tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_root()
    from ductile.config.model import ServiceConfig
    from ductile.privsep.accounts import ResolvedAccount
    from ductile.privsep.spawnspec import build_spawn_spec
    from ductile.runtime.outcome import classify
    from ductile.runtime.spawn import spawn

    hidden = tmp_path / "closed" / "acct"  # pytest's tmp_path is under 0700 dirs: unreachable for 61996
    hidden.mkdir(parents=True)
    os.chown(hidden, 61996, 61996)
    spec = build_spawn_spec(ResolvedAccount("a", 61996, 61996, str(hidden), "granted"), "/bin/true", ServiceConfig(),
                            {}, timeout=5, unconfined_workdir="/")
    outcome = classify(spec, spawn(spec, b"{}"), "p")
    assert outcome.status == "failed" and outcome.terminal
    assert outcome.error is not None and "is not reachable by account a" in outcome.error.message
    assert outcome.error.where == "accounts.a.state_dir"


def test_entrypoint_the_account_cannot_execute_is_named_as_such(world: World) -> None:
    entry = world.base / "plugins" / "probe" / "run.py"
    os.chmod(entry, 0o700)
    try:
        proc = world.plugin_run("probe", {})
    finally:
        os.chmod(entry, 0o755)
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "failed" and out["outcome"]["terminal"] is True
    assert "not executable by account default" in out["outcome"]["error"]["message"]
