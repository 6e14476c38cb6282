"""The Landlock allowlist (SPEC §5.10; issue #14), as real plugins trying to get around it,
through the real CLI as a root gateway and as a cap-only gateway. This host's kernel has
Landlock ABI 7 (filesystem, TCP, scoping); a skip here would prove nothing."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, REPO
from servehelp import wait_for
from wallworld import WORLD_ENV, World, destroy, make_world, require_root

from ductile.privsep import landlock_linux

pytestmark = pytest.mark.privileged

TRY = '''\
#!/usr/bin/python3
"""Tries, and reports, every access the test asks for."""
import errno, json, os, socket, sys, tempfile
req = json.load(sys.stdin)
p = req["payload"]
def name(e): return errno.errorcode.get(e.errno, str(e.errno))
out = {"read": {}, "connect": {}, "signal": {}}
for path in p.get("read", []):
    try:
        open(path, "rb").read(1)
        out["read"][path] = "READ"
    except OSError as e:
        out["read"][path] = name(e)
for port in p.get("connect", []):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        out["connect"][str(port)] = "CONNECTED"
    except OSError as e:
        out["connect"][str(port)] = name(e)
    finally:
        s.close()
for pid in p.get("signal", []):
    try:
        os.kill(pid, 0)
        out["signal"][str(pid)] = "SIGNALLED"
    except OSError as e:
        out["signal"][str(pid)] = name(e)
with open("own-file", "w") as fh:
    fh.write("mine")
out["own_dir"] = open("own-file").read()
fd, tmp = tempfile.mkstemp()
os.write(fd, b"x")
os.close(fd)
out["tmpdir"] = os.path.dirname(tmp)
os.unlink(tmp)
import decimal, email.parser, sqlite3, ssl, zoneinfo, hashlib  # the standard library, C extensions included
out["stdlib"] = ssl.OPENSSL_VERSION.split()[0]
if p.get("hold"):
    open("held.pid", "w").write(str(os.getpid()))
    import time
    deadline = time.monotonic() + 60
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.05)
json.dump({"status": "ok", "result": out}, sys.stdout)
'''

OTHER = '''\
#!/usr/bin/python3
import json, sys
json.load(sys.stdin)
json.dump({"status": "ok", "result": "other"}, sys.stdout)
'''


@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    if landlock_linux.abi() < 6:
        pytest.skip("needs Landlock ABI 6 (this CI host has 7)")
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted"], {}, {"try": TRY, "other": OTHER})
    public = w.base / "public"          # world-readable, outside every allowlist
    public.mkdir(mode=0o755)
    os.chmod(public, 0o755)
    (public / "notes.txt").write_text("anyone may read this")
    os.chmod(public / "notes.txt", 0o644)
    allowed = socket.create_server(("127.0.0.1", 0))
    denied = socket.create_server(("127.0.0.1", 0))
    w.ports = (allowed.getsockname()[1], denied.getsockname()[1])  # type: ignore[attr-defined]
    w.sockets = (allowed, denied)  # type: ignore[attr-defined]
    w.plugins = {"try": f"{{run_as: default, network: {{connect: [{w.ports[0]}]}}}}",  # type: ignore[attr-defined]
                 "other": "{run_as: default}"}
    w.write_config()
    yield w
    for s in w.sockets:  # type: ignore[attr-defined]
        s.close()
    destroy(w)


def attempt(w: World, **payload: Any) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = w.plugin_run("try", payload)
    out = json.loads(proc.stdout)
    assert out["outcome"]["status"] == "succeeded", (out, proc.stderr)
    return out["outcome"]["result"], proc


def test_a_world_readable_file_outside_the_allowlist_is_denied(world: World) -> None:
    public = str(world.base / "public" / "notes.txt")
    assert os.stat(public).st_mode & 0o004  # the uid wall would let any account read it
    r, proc = attempt(world, read=[public, "/etc/passwd", "/proc/self/status"])
    assert r["read"] == {public: "EACCES", "/etc/passwd": "EACCES", "/proc/self/status": "EACCES"}, r
    assert "landlock=abi" in proc.stderr


def test_another_plugins_code_is_denied(world: World) -> None:
    other = str(world.base / "plugins" / "other" / "run.py")
    own = str(world.base / "plugins" / "try" / "run.py")
    r, _ = attempt(world, read=[other, own])
    assert r["read"] == {other: "EACCES", own: "READ"}, r


def test_state_dir_tmpdir_and_the_standard_library_work(world: World) -> None:
    r, _ = attempt(world)
    assert r["own_dir"] == "mine" and r["tmpdir"] == str(world.state_dir("default") / "tmp")
    assert r["stdlib"] == "OpenSSL"


def test_tcp_connect_only_to_the_listed_port(world: World) -> None:
    allowed, denied = world.ports  # type: ignore[attr-defined]
    r, _ = attempt(world, connect=[allowed, denied])
    assert r["connect"] == {str(allowed): "CONNECTED", str(denied): "EACCES"}, r


def test_a_job_cannot_signal_another_job_of_the_same_account(world: World) -> None:
    """Two jobs of the account `default` at once: the second may not signal the first."""
    held = world.state_dir("default") / "held.pid"
    held.unlink(missing_ok=True)
    (world.state_dir("default") / "release").unlink(missing_ok=True)
    first = subprocess.Popen(world.command("plugin", "run", "try", "--payload", '{"hold": true}', "--json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=WORLD_ENV, cwd="/")
    try:
        wait_for("the first job to start", held.exists, deadline=60)
        pid = int(held.read_text())
        r, _ = attempt(world, signal=[pid])
        assert r["signal"] == {str(pid): "EPERM"}, r
    finally:
        (world.state_dir("default") / "release").write_text("go")
        out, err = first.communicate(timeout=60)
    assert json.loads(out)["outcome"]["status"] == "succeeded", err


def test_a_rule_naming_the_age_key_is_refused(world: World) -> None:
    text = (world.etc / "config.yaml").read_text()
    bad = text.replace("  other: {run_as: default}", f"  other: {{run_as: default, filesystem: {{read: [{world.key}]}}}}")
    assert bad != text
    (world.etc / "config.yaml").write_text(bad)
    try:
        proc = world.plugin_run("other", {})
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert "plugins.other.filesystem.read[0]" in lines[0] and "age key" in lines[0], lines[0]
        doctor = world.run("doctor", "--json")
        errors = [f for f in json.loads(doctor.stdout)["findings"] if f["severity"] == "error"]
        assert any(f["field"] == "plugins.other.filesystem.read[0]" for f in errors), errors
    finally:
        (world.etc / "config.yaml").write_text(text)


def test_unrestricted_is_logged_and_lifts_the_allowlist(world: World) -> None:
    text = (world.etc / "config.yaml").read_text()
    (world.etc / "config.yaml").write_text(text.replace("  other: {run_as: default}",
                                                        "  other: {run_as: default}\n  try: {run_as: default, filesystem: unrestricted}")
                                           .replace(f"  try: {{run_as: default, network: {{connect: [{world.ports[0]}]}}}}\n", ""))  # type: ignore[attr-defined]
    try:
        r, proc = attempt(world, read=["/etc/passwd"])
        assert r["read"] == {"/etc/passwd": "READ"}
        assert "warning: plugins.try.filesystem: unrestricted" in proc.stderr, proc.stderr
    finally:
        (world.etc / "config.yaml").write_text(text)


# ---- examples and upstream-style plugins pass under the default allowlist + doctor's rules ----

def test_examples_and_upstream_plugins_pass_under_the_allowlist_plus_suggested_rules() -> None:
    require_root()
    w = make_world(0, ["default", "untrusted"], {}, {})
    try:
        inbox = w.base / "inbox"
        inbox.mkdir(mode=0o755)
        os.chmod(inbox, 0o755)
        for src in [*sorted((EXAMPLES / "plugins").iterdir()), REPO / "tests" / "fixtures" / "upstream" / "birdsong_digest"]:
            shutil.copytree(src, w.base / "plugins" / src.name)
        subprocess.run(["chmod", "-R", "go-w", str(w.base / "plugins")], check=True)
        names = sorted(p.name for p in (w.base / "plugins").iterdir())
        # one plugin names a path in its config, as a ported plugin would
        w.plugins = {n: "{run_as: default}" for n in names}
        w.plugins["echo"] = f"{{run_as: default, config: {{message: hi, archive: {inbox}}}}}"
        w.write_config()
        doctor = json.loads(w.run("doctor", "--json").stdout)
        hints = [f for f in doctor["findings"] if f["category"] == "landlock" and f["field"] == "plugins.echo.config"]
        assert len(hints) == 1 and f"add it to plugins.echo.filesystem.read" in hints[0]["message"], hints
        w.plugins["echo"] = (f"{{run_as: default, config: {{message: hi, archive: {inbox}}}, "
                             f"filesystem: {{read: [{inbox}]}}}}")
        w.write_config()
        doctor = json.loads(w.run("doctor", "--json").stdout)
        assert not [f for f in doctor["findings"] if f["field"] == "plugins.echo.config"], "the hint must go once applied"
        for name in names:
            command = "handle" if name == "notify" else "poll"
            proc = w.plugin_run(name, {"x": 1}, command=command)
            out = json.loads(proc.stdout)
            assert out["outcome"]["status"] == "succeeded", (name, out["outcome"], out["stderr_tail"])
            assert "landlock=abi" in proc.stderr
    finally:
        destroy(w)


def test_account_explain_shows_the_allowlist_and_what_is_enforced(world: World) -> None:
    proc = world.run("account", "explain", "try", "--json")
    info = json.loads(proc.stdout)["landlock"]
    assert info["abi"] >= 6 and info["enforced"]["network"].startswith("TCP connect")
    assert str(world.state_dir("default")) in info["write"]
    assert str(world.base / "plugins" / "try") in info["read"] and "/usr" in info["read"]
    assert "/proc" not in info["read"] and str(world.base / "plugins") not in info["read"]


# ---- the kernel ruleset kept between jobs of one gateway process ----

@pytest.fixture()
def one_account():  # type: ignore[no-untyped-def]
    """An account, its state_dir and a plugin, for spawns made in this process (so they
    share this process's kernel rulesets, as the jobs of one gateway do)."""
    from wallworld import free_ids, kill_uid

    require_root()
    if landlock_linux.abi() < 6:
        pytest.skip("needs Landlock ABI 6 (this CI host has 7)")
    uid = free_ids(1)[0]
    base = Path(tempfile.mkdtemp(prefix="ductile-ll-", dir="/tmp"))
    os.chmod(base, 0o711)
    state = base / "acct"
    state.mkdir(mode=0o700)
    os.chown(state, uid, uid)
    plugin = base / "plugin"
    plugin.mkdir(mode=0o755)
    (plugin / "run").write_text(TRY)
    os.chmod(plugin / "run", 0o755)
    landlock_linux.forget_built()
    yield uid, base, state, plugin
    landlock_linux.forget_built()
    kill_uid(uid)
    shutil.rmtree(base, ignore_errors=True)


def _spec(uid: int, state: Path, plugin: Path):  # type: ignore[no-untyped-def]
    from ductile.config.model import ServiceConfig
    from ductile.privsep import landlock
    from ductile.privsep.accounts import ResolvedAccount
    from ductile.privsep.spawnspec import Confinement, build_spawn_spec

    ruleset = landlock.build_ruleset(landlock_linux.abi(), landlock.PluginFacts(str(plugin), "/usr"), str(state),
                                     ["/usr/bin", "/bin"], None, None, os.path.exists)
    return build_spawn_spec(ResolvedAccount("default", uid, uid, str(state), "granted"), str(plugin / "run"),
                            ServiceConfig(), {}, timeout=60, unconfined_workdir="/",
                            confinement=Confinement(path="/usr/bin:/bin", landlock=ruleset))


def _job(spec, payload: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from ductile.runtime.spawn import spawn

    raw = spawn(spec, json.dumps({"protocol": 2, "payload": payload}).encode())
    assert raw.returncode == 0, raw.stderr_tail
    return json.loads(raw.stdout)["result"]


def test_two_jobs_from_one_kept_ruleset_cannot_signal_each_other(one_account) -> None:  # type: ignore[no-untyped-def]
    """The second job reuses the kernel ruleset the first was built from, and still gets a
    domain of its own: it may not signal the first job's process, of the same account."""
    import threading

    uid, _base, state, plugin = one_account
    spec = _spec(uid, state, plugin)
    first: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: first.update(_job(spec, {"hold": True})))
    holder.start()
    try:
        wait_for("the first job to start", (state / "held.pid").exists, deadline=60)
        pid = int((state / "held.pid").read_text())
        kept = dict(landlock_linux._built)
        assert len(kept) == 1, kept
        second = _job(spec, {"signal": [pid]})
        assert dict(landlock_linux._built) == kept  # built once, used by both jobs
        assert second["signal"] == {str(pid): "EPERM"}, second
    finally:
        (state / "release").write_text("go")
        holder.join(60)
    assert first["own_dir"] == "mine"


def test_a_state_dir_replaced_between_jobs_gets_a_new_kernel_ruleset(one_account) -> None:  # type: ignore[no-untyped-def]
    """A rule holds the inode its path named when it was built: a state_dir restored under
    the same name is another directory, so the next job must not run on the old rule
    (which would deny the new directory) — nor on a rule for a directory now elsewhere."""
    uid, base, state, plugin = one_account
    spec = _spec(uid, state, plugin)
    assert _job(spec, {})["own_dir"] == "mine"
    (old,) = landlock_linux._built.values()
    state.rename(base / "acct.old")
    state.mkdir(mode=0o700)
    os.chown(state, uid, uid)
    assert _job(spec, {})["own_dir"] == "mine"
    (new,) = landlock_linux._built.values()
    assert new is not old and old.retired
    assert (state / "own-file").read_text() == "mine"
