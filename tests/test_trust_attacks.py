"""The attacks of #10 (and #9's "one account's broken directory"), carried out for real by
hostile plugins against a root gateway and a cap-only gateway. Each one succeeded before:
the reconcile chowned what a planted symlink pointed at, an interpreter or a helper another
account could rewrite ran with the victim's grant, a plugin root under an account's
directory was trusted, a 0644 key was quietly tightened, and one plugin's `chmod 0755 $HOME`
stopped every account."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servehelp import wait_for
from test_vault_delivery import vault_cli
from wallworld import MARKER_PLUGIN, PYTHON, World, destroy, make_world, require_root

pytestmark = pytest.mark.privileged

# A hostile plugin: does to the filesystem whatever its payload asks, as its own account.
PLANT = textwrap.dedent('''\
    #!/usr/bin/python3
    import json, os, sys
    p = json.load(sys.stdin)["payload"]
    done = []
    for link, target in p.get("symlink", {}).items():
        os.symlink(target, link); done.append("symlink " + link)
    for old, new in p.get("rename", {}).items():
        os.rename(old, new); done.append("rename " + old)
    for d in p.get("mkdirs", []):
        os.makedirs(d); done.append("mkdir " + d)
    for path, text in p.get("write", {}).items():
        with open(path, "w") as fh:
            fh.write(text)
        os.chmod(path, 0o755); done.append("write " + path)
    for path, text in p.get("append", {}).items():
        with open(path, "a") as fh:
            fh.write(text)
        done.append("append " + path)
    if "chmod_home" in p:
        os.chmod(os.environ["HOME"], int(p["chmod_home"], 8)); done.append("chmod home " + p["chmod_home"])
    json.dump({"status": "ok", "result": done}, sys.stdout)
''')

# Imports the helper next to it, which (in the attack) another account has rewritten.
HELPED = textwrap.dedent('''\
    #!/usr/bin/python3
    import json, os, sys
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    import _stopwatch
    req = json.load(sys.stdin)
    json.dump({"status": "ok", "result": {"lap": _stopwatch.lap(), "secrets": sorted(req.get("secrets") or {})}}, sys.stdout)
''')
STOPWATCH = "def lap():\n    return 1\n"

# Runs through a wrapper interpreter (owned, in the attack, by another account).
VICTIM = textwrap.dedent('''\
    import json, sys
    req = json.load(sys.stdin)
    json.dump({"status": "ok", "result": {"secrets": sorted(req.get("secrets") or {})}}, sys.stdout)
''')
WRAPPER = "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n"


def add_plugin(root: Path, name: str, source: str, files: dict[str, tuple[str, int]] | None = None) -> Path:
    d = root / name
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "manifest.yaml").write_text(f"name: {name}\nprotocol: 2\nentrypoint: run.py\ncommands: [{{name: poll, type: read}}]\n")
    (d / "run.py").write_text(source)
    os.chmod(d / "run.py", 0o755)
    for rel, (text, mode) in (files or {}).items():
        (d / rel).write_text(text)
        os.chmod(d / rel, mode)
    return d


# The attacker is the ops account itself — any process of that uid (a shell, a job of a
# plugin allowed `filesystem: unrestricted`). Landlock would stop a confined `plant` from
# planting anything outside its state_dir, so it runs unrestricted here: these tests prove
# the uid and trust layers hold on their own.
UNBOUND_OPS = "{run_as: ops, filesystem: unrestricted}"


@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """Accounts default, untrusted, ops; `plant` (hostile, ops) and `mark` (default) run;
    `victim` (interpreter owned by ops), `helped` (world-writable helper) and `teamed`
    (under a root an ops-owned directory holds) are the traps."""
    require_root()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted", "ops"],
                   {"plant": UNBOUND_OPS, "mark": "{run_as: default}", "victim": "{run_as: default}",
                    "helped": "{run_as: default}", "teamed": "{run_as: default}"},
                   {"plant": PLANT, "mark": MARKER_PLUGIN})
    ops = w.accounts["ops"]
    wrap = w.base / "wrap"
    wrap.mkdir(mode=0o755)
    os.chmod(wrap, 0o755)
    (wrap / "py").write_text(WRAPPER)
    os.chmod(wrap / "py", 0o755)
    os.chown(wrap / "py", ops, ops)
    add_plugin(w.base / "plugins", "victim", f"#!{wrap / 'py'}\n" + VICTIM)
    add_plugin(w.base / "plugins", "helped", HELPED, {"_stopwatch.py": (STOPWATCH, 0o666)})
    team = w.base / "team"
    team.mkdir(mode=0o755)
    os.chmod(team, 0o755)
    (team / "plugins").mkdir(mode=0o755)
    os.chmod(team / "plugins", 0o755)
    os.chown(team, ops, ops)
    add_plugin(team / "plugins", "teamed", MARKER_PLUGIN)
    w.extra_roots.append(team / "plugins")
    w.write_config()
    for principal in ("victim", "helped"):
        assert vault_cli(w, "principal", "add", principal).returncode == 0
        assert vault_cli(w, "set", f"{principal}-token", "--grant", principal, input="s3cr3t-" + principal).returncode == 0
    yield w
    destroy(w)


def run(world: World, plugin: str, payload: dict[str, Any] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = world.plugin_run(plugin, payload or {})
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from plugin run {plugin}: {proc.stdout}\n{proc.stderr}") from None


def attack_then_run(world: World, attack: dict[str, Any], plugin: str,
                    payload: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """`plant` does ``attack`` as ops; then ``plugin`` must be refused: nothing spawned, no secrets."""
    proc, _ = run(world, "plant", attack)
    assert proc.returncode == 0, proc.stderr
    proc, out = run(world, plugin, payload)
    assert proc.returncode == 1 and out["pid"] is None and out["secrets_delivered"] == [], proc.stderr
    assert "s3cr3t" not in proc.stdout + proc.stderr
    return proc


def skipped(world: World) -> dict[str, list[dict[str, str]]]:
    listed = json.loads(world.run("plugin", "list", "--json").stdout)
    return {r["name"]: r["problems"] for r in listed["plugins"] if r["status"] == "skipped"}


def events(world: World, type_: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT payload FROM events WHERE type = ? ORDER BY rowid", (type_,))]
    finally:
        conn.close()


def test_the_hostile_plugin_and_a_clean_one_run(world: World) -> None:
    """The baseline: the traps are refused, everything else runs."""
    proc, out = run(world, "mark", {"marker": str(world.state_dir("default") / "m")})
    assert proc.returncode == 0, proc.stderr
    proc, out = run(world, "plant", {})
    assert proc.returncode == 0 and out["account"]["name"] == "ops", proc.stderr
    assert set(skipped(world)) == {"victim", "helped", "teamed"}


def test_an_interpreter_owned_by_another_account_is_skipped_and_never_fed_secrets(world: World) -> None:
    """#10 attack 2: victim's #! names a wrapper ops owns; ops rewrites it to steal stdin."""
    [problem] = [p for p in skipped(world)["victim"] if p["field"] == "trust.interpreter"]
    wrapper = world.base / "wrap" / "py"
    assert str(wrapper) in problem["message"] and f"uid {world.accounts['ops']}" in problem["message"]
    assert problem["fix"].startswith(f"chown root {wrapper}")
    stolen = world.state_dir("ops") / "stolen"
    try:
        proc = attack_then_run(world, {"write": {str(wrapper): f"#!/bin/sh\ncat > {stolen}\n"}}, "victim")
        assert "refused" in proc.stderr
        assert not stolen.exists(), "the wrapper ran with the victim's request"
        lock = world.run("plugin", "lock", "victim")
        assert lock.returncode == 1 and "not discovered (or refused)" in lock.stderr
    finally:
        wrapper.write_text(WRAPPER)


def test_a_world_writable_helper_is_skipped_and_its_code_never_runs(world: World) -> None:
    """#10 attack 3: any account can put code into helped's _stopwatch.py."""
    helper = world.base / "plugins" / "helped" / "_stopwatch.py"
    [problem] = skipped(world)["helped"]
    assert problem["field"] == "trust.not-group-or-world-writable" and str(helper) in problem["message"]
    assert problem["fix"] == f"chmod go-w {helper}"
    pwned = world.state_dir("default") / "pwned-by-helper"
    try:
        attack_then_run(world, {"append": {str(helper): f"\nopen({str(pwned)!r}, 'w').write('x')\n"}}, "helped")
        assert not pwned.exists()
        doc = json.loads(world.run("doctor", "--json").stdout)
        assert any(f["severity"] == "error" and str(helper) in f["message"] for f in doc["findings"])
    finally:
        helper.write_text(STOPWATCH)
        os.chmod(helper, 0o666)


def test_a_plugin_root_under_an_account_owned_directory_is_refused_whole(world: World) -> None:
    """#10 attack 4: ops owns the directory above a plugin root, renames the root away and
    plants its own `teamed` that would run with default's grant."""
    team = world.base / "team"
    [problem] = skipped(world)["teamed"]
    assert problem["field"] == "plugin_roots[1]" and str(team) in problem["message"]
    assert "none of its plugins is trusted" in problem["message"]
    pwned = world.state_dir("default") / "pwned-by-root"
    planted = team / "plugins" / "teamed"
    manifest = "name: teamed\nprotocol: 2\nentrypoint: run.py\ncommands: [{name: poll, type: read}]\n"
    evil = f"#!/usr/bin/python3\nopen({str(pwned)!r}, 'w').write('x')\nprint('{{\"status\": \"ok\"}}')\n"
    try:
        attack_then_run(world, {"rename": {str(team / "plugins"): str(team / "old")}, "mkdirs": [str(planted)],
                                "write": {str(planted / "manifest.yaml"): manifest, str(planted / "run.py"): evil}},
                        "teamed", {"marker": str(pwned)})
        assert not pwned.exists()
        doc = json.loads(world.run("doctor", "--json").stdout)
        assert any(f["field"] == "plugin_roots[1]" and f["severity"] == "error" for f in doc["findings"])
    finally:
        subprocess.run(["rm", "-rf", str(team / "plugins")], check=True)
        os.rename(team / "old", team / "plugins")


def test_an_exposed_key_is_refused_with_rotate_and_the_fix_works(world: World) -> None:
    """#10 attack 5: a 0644 key was quietly reset to 0600. Now: refuse, say rotate, and the
    commands the refusal names get the gateway running again."""
    before = world.key.read_text()
    os.chmod(world.key, 0o644)
    proc = world.plugin_run("mark", {"marker": str(world.state_dir("default") / "m")})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "may have been read" in lines[0] and "ductile vault rotate-key" in lines[0] and f"chmod 0600 {world.key}" in lines[0]
    assert stat.S_IMODE(world.key.stat().st_mode) == 0o644, "the key was tightened behind the operator's back"
    doc = json.loads(world.run("doctor", "--json").stdout)
    assert any(f["field"] == str(world.key) and "rotate" in f["fix"] for f in doc["findings"] if f["severity"] == "error")
    # the fix, as written: chmod 0600, then rotate as the gateway
    os.chmod(world.key, 0o600)
    rotated = vault_cli(world, "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    old = world.key.with_name(world.key.name + ".old")
    old.unlink()
    assert world.key.read_text() != before
    proc = world.plugin_run("mark", {"marker": str(world.state_dir("default") / "m")})
    assert proc.returncode == 0, proc.stderr


def test_plugins_with_different_principals_on_one_account_warn(world: World) -> None:
    """#10 attack 6: two plugins with different vault principals on one account can read each
    other's secrets (same uid: /proc/<pid>/mem, a planted .pth)."""
    saved = dict(world.plugins)

    def shared() -> list[dict[str, str]]:
        doc = json.loads(world.run("doctor", "--json").stdout)
        return [f for f in doc["findings"] if f["field"] == "accounts.default" and "share account" in f["message"]]

    try:
        world.plugins["mark"] = "{run_as: default, vault_principal: mark-bot}"
        world.write_config()
        assert shared() == []                       # one principal on default: nothing to steal from a neighbour
        world.plugins["plant"] = "{run_as: default, vault_principal: plant-bot, filesystem: unrestricted}"
        world.write_config()
        [warn] = shared()
        assert warn["severity"] == "warning" and "isolation unit" in warn["message"]
        assert "mark-bot" in warn["message"] and "plant-bot" in warn["message"] and "its own account" in warn["fix"]
    finally:
        world.plugins.clear()
        world.plugins.update(saved)
        world.write_config()


def test_a_plugin_that_loosens_its_own_home_stops_nobody(world: World) -> None:
    """#9 item 4: `chmod 0755 $HOME` by ops's plugin. The next boot repairs it (root through
    a descriptor, cap-only through a chmod helper dropped to ops), logs and records it, and
    every account runs; serve boots too."""
    ops_dir = world.state_dir("ops")
    proc, _ = run(world, "plant", {"chmod_home": "0755"})
    assert proc.returncode == 0 and stat.S_IMODE(ops_dir.stat().st_mode) == 0o755, proc.stderr
    proc, out = run(world, "mark", {"marker": str(world.state_dir("default") / "m")})
    assert proc.returncode == 0 and out["outcome"]["status"] == "succeeded", proc.stderr
    assert stat.S_IMODE(ops_dir.stat().st_mode) == 0o700
    by = "(as account ops)" if world.gateway_uid else ""
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"reconcile: chmod {ops_dir}")]
    assert "0755" in line and "-> directory 0700" in line and by in line
    recorded = [e for e in events(world, "ductile.reconcile") if e["path"] == str(ops_dir)]
    assert recorded and "0755" in recorded[-1]["before"] and "0700" in recorded[-1]["after"]
    assert recorded[-1]["by"] == ("account" if world.gateway_uid else "gateway")

    # again, then serve: it boots, repairs, says so in its log, and ops's scheduled job runs
    assert run(world, "plant", {"chmod_home": "0755"})[0].returncode == 0
    saved = dict(world.plugins)
    world.plugins["plant"] = "{run_as: ops, filesystem: unrestricted, schedules: [{every: 1s}]}"
    world.write_config()
    cmd = [PYTHON, "-m", "ductile", "serve", "--config", str(world.etc)]
    if world.gateway_uid:
        gw = world.gateway_uid
        cmd = ["setpriv", f"--reuid={gw}", f"--regid={gw}", "--clear-groups", "--inh-caps=-all,+setuid,+setgid",
               "--ambient-caps=+setuid,+setgid", "--", *cmd]
    log = world.base / f"serve-{uuid.uuid4().hex[:6]}.log"

    def succeeded() -> int:  # `plugin run` jobs are in the ledger too: count, then wait for one more
        listed = world.run("job", "list", "--json", "--plugin", "plant", "--status", "succeeded")
        return len(json.loads(listed.stdout)) if listed.returncode == 0 else -1

    before = succeeded()
    with open(log, "wb") as fh:
        serve = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd="/",
                                 env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1"})
    try:
        def ran() -> bool:
            if serve.poll() is not None:
                raise AssertionError(f"serve exited {serve.returncode}:\n{log.read_text()}")
            return succeeded() > before

        wait_for("serve to boot, repair ops's directory and run its job", ran, log=log.read_text, interval=0.3)
        assert f"reconcile: chmod {ops_dir}" in log.read_text()
        assert stat.S_IMODE(ops_dir.stat().st_mode) == 0o700
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
        world.plugins.clear()
        world.plugins.update(saved)
        world.write_config()
    assert code == 0, log.read_text()


def test_an_unrepairable_home_refuses_only_that_account(world: World) -> None:
    """`chmod 0000 $HOME`: root repairs it; a cap-only gateway's helper cannot enter it, so
    ops is refused with the reason and the fix — and default still runs."""
    ops_dir = world.state_dir("ops")
    assert run(world, "plant", {"chmod_home": "0000"})[0].returncode == 0
    try:
        proc, out = run(world, "mark", {"marker": str(world.state_dir("default") / "m")})
        assert proc.returncode == 0 and out["outcome"]["status"] == "succeeded", proc.stderr
        if world.gateway_uid == 0:
            assert stat.S_IMODE(ops_dir.stat().st_mode) == 0o700
            return
        assert stat.S_IMODE(ops_dir.stat().st_mode) == 0
        assert any(ln.startswith("account ops refused:") for ln in proc.stderr.splitlines()), proc.stderr
        proc, out = run(world, "plant", {})
        assert proc.returncode == 1 and out["outcome"]["error"]["kind"] == "account_refused" and out["pid"] is None
        last = proc.stderr.splitlines()[-1]
        assert str(ops_dir) in last and "chmod 0700" in last
        refused = events(world, "ductile.account_refused")
        assert any(e["account"] == "ops" for e in refused)
    finally:
        os.chmod(ops_dir, 0o700)


# ---- the reconcile itself ------------------------------------------------------------------

def _set_state_dir(w: World, name: str, path: Path) -> None:
    w.state_dirs[name] = path
    w.write_config()


@pytest.mark.parametrize("gateway", ["root"])
def test_a_symlink_planted_under_sticky_tmp_cannot_bend_the_root_reconcile(gateway: str) -> None:
    """#10 attack 1: default's state_dir lies under /tmp with a component missing; ops
    plants a symlink there to a root-owned 0755 directory. The root gateway used to chown
    that directory to default and chmod it 0700."""
    require_root()
    w = make_world(0, ["default", "untrusted", "ops"], {"plant": UNBOUND_OPS, "mark": "{run_as: default}"},
                   {"plant": PLANT, "mark": MARKER_PLUGIN})
    planted = Path(f"/tmp/dtrust-{uuid.uuid4().hex[:8]}")
    target = w.base / "rootdir"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    (target / "root-file").write_text("root's\n")
    try:
        _set_state_dir(w, "default", planted / "acct")
        doc = json.loads(w.run("doctor", "--json").stdout)
        assert any(f["severity"] == "error" and f["field"] == str(planted) and "someone else could create it"
                   in f["message"] for f in doc["findings"])
        proc, _ = run(w, "plant", {"symlink": {str(planted): str(target)}})   # ops still runs
        assert proc.returncode == 0 and planted.is_symlink(), proc.stderr
        proc, out = run(w, "mark", {"marker": str(target / "m")})
        assert proc.returncode == 1 and out["outcome"]["error"]["kind"] == "account_refused" and out["pid"] is None
        last = proc.stderr.splitlines()[-1]
        assert str(planted) in last and "symlink" in last and "fix:" in last
        st = target.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755), "the reconcile was bent"
        assert not (target / "acct").exists() and (target / "root-file").read_text() == "root's\n"
    finally:
        if planted.is_symlink():
            planted.unlink()
        destroy(w)


@pytest.mark.parametrize("gateway", ["root", "cap-only"])
def test_a_state_dir_naming_an_existing_root_directory_is_not_taken_over(gateway: str) -> None:
    """A typo such as `state_dir: /etc/default` used to be chowned to the account."""
    require_root()
    w = make_world(0 if gateway == "root" else None, ["default", "untrusted"], {"mark": "{run_as: default}"},
                   {"mark": MARKER_PLUGIN})
    try:
        rootdir = w.base / "etc-default"
        rootdir.mkdir(mode=0o755)
        os.chmod(rootdir, 0o755)
        _set_state_dir(w, "default", rootdir)
        proc, out = run(w, "mark", {"marker": str(rootdir / "m")})
        assert proc.returncode == 1 and out["outcome"]["error"]["kind"] == "account_refused"
        last = proc.stderr.splitlines()[-1]
        assert "belongs to root" in last and "choose a new path" in last and "never taken over" in last
        st = rootdir.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    finally:
        destroy(w)


@pytest.mark.parametrize("gateway", ["root", "cap-only"])
def test_doctor_shows_exactly_what_the_apply_does(gateway: str) -> None:
    """The plan doctor prints and the changes the boot applies and records, on one world:
    loose config dir, DB and vault; a missing account dir; a loosened one; one owned by root."""
    require_root()
    w = make_world(0 if gateway == "root" else None, ["default", "untrusted", "ops", "typo"],
                   {"mark": "{run_as: default}"}, {"mark": MARKER_PLUGIN})
    try:
        os.chmod(w.etc, 0o755)
        os.chmod(w.db, 0o644)
        os.chmod(w.vault, 0o640)
        subprocess.run(["rm", "-rf", str(w.state_dir("untrusted"))], check=True)
        os.chmod(w.state_dir("ops"), 0o750)
        os.chown(w.state_dir("typo"), 0, 0)
        doc = json.loads(w.run("doctor", "--json").stdout)
        planned = set()
        refused = set()
        for f in doc["findings"]:
            if f["category"] != "privsep":
                continue
            if f["message"].startswith("at start the gateway will "):
                planned.add((f["message"].split()[5], f["field"]))
            elif f["severity"] == "error" and f["message"].startswith("account "):
                refused.add(f["message"].split()[1])
        proc = w.plugin_run("mark", {"marker": str(w.state_dir("default") / "m")})
        assert proc.returncode == 0, proc.stderr
        applied = {(e["op"], e["path"]) for e in events(w, "ductile.reconcile")}
        refused_now = {e["account"] for e in events(w, "ductile.account_refused")}
        assert planned == applied and refused == refused_now, (planned, applied, refused, refused_now)
        logged = {(m.group(1), m.group(2)) for m in (re.match(r"reconcile: (\w+) (\S+?)(?::| \(as account)", ln)
                                                     for ln in proc.stderr.splitlines()) if m}
        assert logged == applied
        expected = {("chmod", str(w.etc)), ("chmod", str(w.etc / "config.yaml")), ("chmod", str(w.db)),
                    ("chmod", str(w.vault)), ("chmod", str(w.state_dir("ops")))}
        if gateway == "root":
            expected |= {("mkdir", str(w.state_dir("untrusted"))), ("chown", str(w.state_dir("untrusted")))}
            assert refused == {"typo"}
        else:
            assert refused == {"typo", "untrusted"}
        assert applied == expected
        again = json.loads(w.run("doctor", "--json").stdout)   # nothing left to do but the refusals
        assert not [f for f in again["findings"] if f["message"].startswith("at start the gateway will ")]
    finally:
        destroy(w)
