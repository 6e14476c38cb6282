"""Job containment against plugins that fight back (SPEC §5.7, §5.9; issue #9): each test is
the attack itself, run through the real CLI as a root gateway and as a cap-only gateway,
in both containment modes (a cgroup v2 per job; the per-account sweep).

On this host cgroup v2 has no controllers, so `limits` fall back to rlimits in both modes;
the cgroup mode still proves placement before the first instruction and cgroup.kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import run_in_pty
from servehelp import wait_for
from wallworld import (WORLD_ENV, Serving, World, delegated_cgroup, destroy, live_processes, make_world,
                       remove_cgroup, require_root)

pytestmark = pytest.mark.privileged

# (gateway, containment): root in its own (root) cgroup or forced to sweep; cap-only in a
# delegated subtree (what systemd's Delegate=yes gives) or in none (sweep)
MODES = [("root", "cgroup"), ("root", "sweep"), ("cap-only", "cgroup"), ("cap-only", "sweep")]
MODE_IDS = [f"{g}-{c}" for g, c in MODES]

TTY = '''\
#!/usr/bin/python3
"""Tries what a plugin could do with the operator's terminal."""
import errno, fcntl, json, os, sys, termios
json.load(sys.stdin)
def name(e): return errno.errorcode.get(e.errno, str(e.errno))
out = {"pid": os.getpid(), "sid": os.getsid(0), "gateway_sid": os.getsid(os.getppid())}
try:
    fd = os.open("/dev/tty", os.O_RDWR)
    out["dev_tty"] = "OPENED"
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")
        out["tiocsti_tty"] = "INJECTED"
    except OSError as e:
        out["tiocsti_tty"] = name(e)
except OSError as e:
    out["dev_tty"] = name(e)
sti = {}
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")
        sti[fd] = "INJECTED"
    except OSError as e:
        sti[fd] = name(e)
out["tiocsti_stdio"] = sti
try:
    os.setpgid(0, os.getpgid(os.getppid()))
    out["join_gateway_group"] = "JOINED"
except OSError as e:
    out["join_gateway_group"] = name(e)
json.dump({"status": "ok", "result": out}, sys.stdout)
'''

JOIN_AND_IGNORE = '''\
#!/usr/bin/python3
"""Joins the gateway's process group (if it can), ignores SIGTERM, sleeps."""
import errno, json, os, signal, sys, time
json.load(sys.stdin)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:
    os.setpgid(0, os.getpgid(os.getppid()))
    r = "JOINED"
except OSError as e:
    r = errno.errorcode[e.errno]
open("joined", "w").write(r)
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
time.sleep(600)
'''

DAEMON = '''\
#!/usr/bin/python3
"""A setsid'd double-fork daemon with closed stdio, then a successful answer."""
import json, os, sys, time
json.load(sys.stdin)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(r)
        for fd in (0, 1, 2):
            os.close(fd)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        time.sleep(600)
        os._exit(0)
    os._exit(0)
os.close(w)
pid = int(os.read(r, 32))
open("daemon.pid", "w").write(str(pid))
json.dump({"status": "ok", "result": {"daemon": pid}}, sys.stdout)
'''

FIRST_FORK = '''\
#!/usr/bin/python3
import os
pid = os.fork()  # the first instruction: this child must already be inside the job
import json, sys, time
if pid == 0:
    os.setsid()
    with open("child.json.tmp", "w") as fh:
        json.dump({"pid": os.getpid(), "cgroup": open("/proc/self/cgroup").read()}, fh)
    os.rename("child.json.tmp", "child.json")  # the parent never reads a half-written file
    time.sleep(600)
    os._exit(0)
json.load(sys.stdin)
while not os.path.exists("child.json"):
    time.sleep(0.01)
child = json.load(open("child.json"))
json.dump({"status": "ok", "result": {"cgroup": open("/proc/self/cgroup").read(), "child": child}}, sys.stdout)
'''

FORK_BOMB = '''\
#!/usr/bin/python3
import errno, json, os, sys, time
json.load(sys.stdin)
n, stopped = 0, None
for _ in range(2000):
    try:
        pid = os.fork()
    except OSError as e:
        stopped = errno.errorcode[e.errno]
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
limits = {ln[:26].strip(): ln[26:].split()[:2] for ln in open("/proc/self/limits").read().splitlines()[1:]}
json.dump({"status": "ok", "result": {"forked": n, "stopped_by": stopped, "limits": limits}}, sys.stdout)
'''

MEMORY_BOMB = '''\
#!/usr/bin/python3
import json, sys
json.load(sys.stdin)
try:
    blob = bytearray(512 * 1024 * 1024)
    r = "ALLOCATED"
except MemoryError:
    r = "MemoryError"
json.dump({"status": "ok", "result": {"allocation": r}}, sys.stdout)
'''

LOOKUP = '''\
#!/usr/bin/python3
import json, os, subprocess, sys
json.load(sys.stdin)
try:
    subprocess.run(["ductile-no-such-tool"])
    r = "RAN"
except OSError as e:
    r = type(e).__name__
json.dump({"status": "ok", "result": {"path": os.environ["PATH"], "lookup": r}}, sys.stdout)
'''

PLUGINS = {"lookup": LOOKUP, "tty": TTY, "join": JOIN_AND_IGNORE, "daemon": DAEMON, "firstfork": FIRST_FORK, "bomb": FORK_BOMB,
           "membomb": MEMORY_BOMB}
# the tty plugin may open /dev/tty as far as Landlock goes (it is denied by default): what
# stops it here must be the missing controlling terminal, ENXIO
GRANTS = {"lookup": "{run_as: default}", "tty": "{run_as: default, filesystem: {write: [/dev/tty]}}", "join": "{run_as: untrusted, timeouts: {poll: 1s}}", "daemon": "{run_as: default}",
          "firstfork": "{run_as: default}", "bomb": "{run_as: sibling, limits: {pids: 12}}",
          "membomb": "{run_as: sibling, limits: {memory: 64MiB}}"}


def contained_world(gateway: str, containment: str, accounts: list[str], grants: dict[str, str],
                    sources: dict[str, str]) -> World:
    w = make_world(0 if gateway == "root" else None, accounts, grants, sources)
    if containment == "sweep":
        w.extra_config = "service: {kill_grace: 1s, containment: sweep}\n"
    elif gateway == "cap-only":
        w.cgroup = delegated_cgroup(w.gateway_uid)
        w.extra_config = "service: {kill_grace: 1s, containment: cgroup}\n"
    else:
        w.extra_config = "service: {kill_grace: 1s, containment: cgroup}\n"
    (w.etc / "config.yaml").write_text(w.config_text().replace("service: {kill_grace: 1s}\n", "", 1))
    w.mode = (gateway, containment)  # type: ignore[attr-defined]
    return w


@pytest.fixture(scope="module", params=MODES, ids=MODE_IDS)
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    w = contained_world(*request.param, ["default", "untrusted", "sibling"], GRANTS, PLUGINS)
    yield w
    destroy(w)


def run_json(w: World, plugin: str, **kw: Any) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = w.plugin_run(plugin, **kw)
    try:
        return json.loads(proc.stdout), proc
    except ValueError:
        raise AssertionError(f"no JSON from plugin run {plugin}: {proc.stdout!r} {proc.stderr!r}") from None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def none_left(uid: int) -> list[str]:
    """Orphans are reaped lazily by PID 1 here: wait (not a timing assertion) for the live ones to go."""
    deadline = time.monotonic() + 10
    while live_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return live_processes(uid)


def test_posture_line_names_the_containment_mode(world: World) -> None:
    out, proc = run_json(world, "daemon")
    assert out["outcome"]["status"] == "succeeded", proc.stderr
    want = world.mode[1]  # type: ignore[attr-defined]
    assert f"containment={want}" in proc.stderr, proc.stderr


def test_tiocsti_from_a_plugin_cannot_reach_the_operators_terminal(world: World) -> None:
    """Attack 1: under a pty (an operator's shell), the plugin opens /dev/tty and pushes
    keystrokes. It must be in a session of its own with no controlling terminal."""
    code, raw = run_in_pty(world.command("plugin", "run", "tty", "--json"), env=WORLD_ENV, timeout=120)
    text = raw.decode(errors="replace").replace("\r\n", "\n")
    start = text.index("\n{") + 1 if not text.startswith("{") else 0
    out, _ = json.JSONDecoder().raw_decode(text[start:])
    r = out["outcome"]["result"]
    assert code == 0, text
    assert r["sid"] == r["pid"] and r["sid"] != r["gateway_sid"], r
    assert r["dev_tty"] == "ENXIO", r
    assert "INJECTED" not in json.dumps(r) and "tiocsti_tty" not in r, r
    assert r["join_gateway_group"] == "EPERM", r


def test_joining_the_gateways_group_and_ignoring_term_cannot_hang_plugin_run(world: World) -> None:
    """Attack 2: plugin run returns (timeout + grace + a margin; the subprocess timeout is
    only the hang guard) and no process of the account remains."""
    uid = world.accounts["untrusted"]
    out, proc = run_json(world, "join", timeout=60)
    assert out["outcome"]["status"] == "timed_out", out
    assert (world.state_dir("untrusted") / "joined").read_text() == "EPERM"
    assert none_left(uid) == []


def test_a_double_fork_daemon_dies_with_its_successful_job(world: World) -> None:
    """Attack 3: a setsid'd double fork with closed stdio outlives a job that answered ok."""
    uid = world.accounts["default"]
    out, proc = run_json(world, "daemon")
    assert out["outcome"]["status"] == "succeeded", proc.stderr
    pid = out["outcome"]["result"]["daemon"]
    assert psutil.Process(pid).uids().real == uid if alive(pid) else True
    wait_for("the daemon to be gone", lambda: not alive(pid), deadline=10)
    assert none_left(uid) == []


def test_a_fork_as_the_first_instruction_is_already_contained(world: World) -> None:
    uid = world.accounts["default"]
    out, proc = run_json(world, "firstfork")
    assert out["outcome"]["status"] == "succeeded", proc.stderr
    r = out["outcome"]["result"]
    if world.mode[1] == "cgroup":  # type: ignore[attr-defined]
        cg = r["cgroup"].strip()
        assert "/ductile-" in cg and "/job-" in cg, cg
        assert r["child"]["cgroup"].strip() == cg  # the child was forked inside the job's cgroup
    wait_for("the child to be gone", lambda: not alive(r["child"]["pid"]), deadline=10)
    assert none_left(uid) == []


def test_a_fork_bomb_stops_at_the_pids_limit(world: World) -> None:
    uid = world.accounts["sibling"]
    out, proc = run_json(world, "bomb")
    assert out["outcome"]["status"] == "succeeded", proc.stderr
    r = out["outcome"]["result"]
    assert r["stopped_by"] == "EAGAIN" and r["forked"] < 12, r
    assert r["limits"]["Max processes"] == ["12", "12"], r  # no pids controller here: RLIMIT_NPROC
    assert r["limits"]["Max core file size"] == ["0", "0"], r
    assert none_left(uid) == []


def test_a_memory_bomb_hits_the_memory_limit(world: World) -> None:
    out, proc = run_json(world, "membomb")
    assert out["outcome"]["result"]["allocation"] == "MemoryError", out


def test_account_explain_says_what_enforces_each_limit(world: World) -> None:
    proc = world.run("account", "explain", "bomb", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["containment"]["mode"] == world.mode[1]  # type: ignore[attr-defined]
    assert info["containment"]["limits"]["pids"].startswith("RLIMIT_NPROC=12"), info["containment"]


# ---- through serve: one long-lived gateway, many jobs --------------------------------------

SLOW = '''\
#!/usr/bin/python3
"""Runs until released (a file the test creates in its state_dir), then answers ok."""
import json, os, sys, time
json.load(sys.stdin)
open("slow.pid", "w").write(str(os.getpid()))
deadline = time.monotonic() + 120
while not os.path.exists("release") and time.monotonic() < deadline:
    time.sleep(0.05)
json.dump({"status": "ok", "result": {"released": os.path.exists("release")}}, sys.stdout)
'''

ORPHANER = '''\
#!/usr/bin/python3
"""First run: leaves a setsid'd daemon and hangs (the gateway is killed -9 meanwhile).
Next run: reports whether the previous run's daemon was still alive when it started."""
import errno, json, os, sys, time
json.load(sys.stdin)
report = {}
if os.path.exists("daemon.pid"):
    pid = int(open("daemon.pid").read())
    try:  # not kill(pid, 0): Landlock scoping answers EPERM for another job's process, alive or not
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        report["previous_daemon"] = "ZOMBIE" if state == "Z" else "ALIVE"
    except OSError as e:
        report["previous_daemon"] = errno.errorcode[e.errno]
    json.dump({"status": "ok", "result": report}, sys.stdout)
    sys.exit(0)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        open("daemon.pid.tmp", "w").write(str(os.getpid()))
        os.rename("daemon.pid.tmp", "daemon.pid")
        time.sleep(600)
    os._exit(0)
time.sleep(600)
'''


SERVE_GRANTS = {"slow": "{run_as: default, schedules: [{every: 1h}], timeouts: {poll: 120s}}",
                "join": "{run_as: default, timeouts: {poll: 1s}}",
                "daemon": "{run_as: untrusted, schedules: [{every: 1h}]}",
                "orphaner": "{run_as: sibling, schedules: [{every: 1h}], timeouts: {poll: 300s}}"}
SERVE_PLUGINS = {"slow": SLOW, "join": JOIN_AND_IGNORE, "daemon": DAEMON, "orphaner": ORPHANER}


@pytest.mark.parametrize("gateway,containment", MODES, ids=MODE_IDS)
def test_serve_contains_jobs_across_processes_and_restarts(gateway: str, containment: str) -> None:
    """Through serve: a double-fork daemon dies with its successful job; `plugin run` timing
    out beside a serve job of the same account does not kill serve's job; after `kill -9`
    of serve, the next boot sweeps the orphans before the crashed job is re-queued."""
    require_root()
    w = contained_world(gateway, containment, ["default", "untrusted", "sibling"], SERVE_GRANTS, SERVE_PLUGINS)
    serve = Serving(w)
    try:
        serve.start()
        # (1) the scheduled daemon job succeeds and its daemon is gone
        wait_for("the daemon job to succeed", lambda: serve.jobs("daemon", "succeeded"), log=serve.log)
        daemon = int((w.state_dir("untrusted") / "daemon.pid").read_text())
        wait_for("serve's daemon to be gone", lambda: not alive(daemon), deadline=10, log=serve.log)

        # (2) serve's slow job runs; plugin run of the same account times out beside it
        slow_pid_file = w.state_dir("default") / "slow.pid"
        wait_for("serve's slow job to start", slow_pid_file.exists, log=serve.log)
        slow = int(slow_pid_file.read_text())
        out, proc = run_json(w, "join", timeout=60)
        assert out["outcome"]["status"] == "timed_out", (out, proc.stderr)
        assert alive(slow), "plugin run's timeout killed serve's job of the same account"
        (w.state_dir("default") / "release").write_text("go")
        done = wait_for("serve's slow job to succeed", lambda: serve.jobs("slow", "succeeded"), log=serve.log)
        assert done[0]["result"] == {"released": True}
        assert none_left(w.accounts["default"]) == [], "the timed-out job's leftovers outlived the account's last job"

        # (3) kill -9 serve mid-job: its plugin and daemon are orphans; the next boot sweeps them first
        daemon_file = w.state_dir("sibling") / "daemon.pid"
        wait_for("the orphaner's daemon", daemon_file.exists, log=serve.log)
        orphan = int(daemon_file.read_text())
        serve.stop(signal.SIGKILL)
        assert alive(orphan), "precondition: the daemon outlives a kill -9 of the gateway"
        serve.start()
        rerun = wait_for("the re-queued orphaner job to succeed", lambda: serve.jobs("orphaner", "succeeded"),
                         log=serve.log)
        assert rerun[0]["result"]["previous_daemon"] in ("ENOENT", "ZOMBIE"), rerun[0]
        assert not alive(orphan)
        assert serve.stop() == 0, serve.log()
        assert none_left(w.accounts["sibling"]) == []
    finally:
        serve.stop(signal.SIGKILL)
        destroy(w)


def test_a_pth_file_planted_in_the_accounts_home_does_not_run_in_the_next_plugin(world: World) -> None:
    """An account's earlier job plants ~/.local/.../evil.pth; the next Python plugin of the
    account must not execute it (PYTHONNOUSERSITE=1)."""
    home = world.state_dir("default")
    uid = world.accounts["default"]
    site = home / ".local" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    marker = home / "pth-ran"
    (site / "evil.pth").write_text(f"import os; open({str(marker)!r}, 'w').write('ran')\n")
    for d in [*site.relative_to(home).parents, site.relative_to(home)]:
        if str(d) != ".":
            os.chown(home / d, uid, uid)
    os.chown(site / "evil.pth", uid, uid)
    out, proc = run_json(world, "daemon")
    assert out["outcome"]["status"] == "succeeded", proc.stderr
    assert not marker.exists(), "a .pth file in the account's user site ran inside a plugin"


def test_path_holds_only_directories_the_account_can_traverse(world: World) -> None:
    """A plugin_path entry under a 0700 directory is left out: a missing tool is
    FileNotFoundError inside the plugin, never PermissionError."""
    hidden = world.base / "hidden"
    (hidden / "bin").mkdir(parents=True, exist_ok=True)
    os.chmod(hidden, 0o700)
    text = (world.etc / "config.yaml").read_text()
    (world.etc / "config.yaml").write_text(
        text.replace("containment:", f"plugin_path: [{hidden / 'bin'}, /usr/bin, /bin], containment:"))
    try:
        out, proc = run_json(world, "lookup")
    finally:
        (world.etc / "config.yaml").write_text(text)
    r = out["outcome"]["result"]
    assert r == {"path": "/usr/bin:/bin", "lookup": "FileNotFoundError"}, (r, proc.stderr)


def test_the_end_of_a_job_removes_its_cgroup_and_counts_what_it_killed() -> None:
    """The cgroup edge at the end of a job: an empty job cgroup is removed at once (the
    common case), a live leftover is killed and counted, and a child cgroup (which no
    plugin can make) still ends up removed."""
    from ductile.privsep import cgroup

    require_root()
    base = delegated_cgroup(0)
    try:
        empty = cgroup.new_job(str(base), ())
        assert empty.end() == 0 and not os.path.exists(empty.path)
        busy = cgroup.new_job(str(base), ())
        child = subprocess.Popen(["/bin/sleep", "60"])
        busy.place(child.pid)
        assert busy.end() == 1 and not os.path.exists(busy.path)
        assert child.wait(10) == -signal.SIGKILL
        nested = cgroup.new_job(str(base), ())
        os.mkdir(os.path.join(nested.path, "inner"))
        assert nested.end() == 0 and not os.path.exists(nested.path)
    finally:
        remove_cgroup(base)


def test_the_orphan_reaper_survives_a_child_reaped_by_its_own_waiter_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child started outside ``launch`` (ctypes' find_library runs ldconfig that way) is
    not tracked: the reaper may peek at it as a zombie and its own Popen may reap it first.
    That race once ended a job as 'could not be recorded' (ECHILD out of the reaper)."""
    from ductile.runtime import jobcontain

    child = subprocess.Popen(["/bin/true"])
    wait_for("the child to exit", lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, deadline=10)
    peek = jobcontain._zombie_child
    seen: list[int | None] = []

    def peek_then_lose_the_race() -> int | None:
        pid = peek()
        seen.append(pid)
        if pid == child.pid and child.returncode is None:
            child.wait()  # its own waiter reaps it between the reaper's peek and its waitpid
        return pid

    monkeypatch.setattr(jobcontain, "_zombie_child", peek_then_lose_the_race)
    assert jobcontain.reap_orphans() == 0
    assert seen[0] == child.pid and child.returncode == 0
