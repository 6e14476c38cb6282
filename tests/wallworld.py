"""Build a throwaway world for the wall tests: accounts (numeric uids with no passwd entry,
from a private range), a config directory, secrets, account dirs and plugins — and run the
real CLI either as a root gateway or as a cap-only gateway (``setpriv``, the way systemd's
``AmbientCapabilities=CAP_SETUID CAP_SETGID`` sets a service up)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

def _uid_range() -> range:
    """The private id range this checkout's worlds draw from. Suites that run side by side on
    one machine set DUCTILE_TEST_UIDS=LOW-HIGH to disjoint ranges, so an account-wide sweep in
    one suite can never hit a process of another."""
    text = os.environ.get("DUCTILE_TEST_UIDS", "61100-61999")
    low, _, high = text.partition("-")
    return range(int(low), int(high) + 1)


UID_RANGE = _uid_range()
IS_ROOT = os.geteuid() == 0
PYTHON = sys.executable


def require_root() -> None:
    if not IS_ROOT:
        pytest.skip("needs root to create accounts and drop privileges")
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to emulate a cap-only gateway")


_ALLOCATED: set[int] = set()


def _in_use_by_processes() -> set[int]:
    import psutil

    return {p.info["uids"].real for p in psutil.process_iter(["uids"], ad_value=None) if p.info["uids"]}


def free_ids(n: int) -> list[int]:
    """n numbers that are neither a uid nor a gid here, nor used by a live process or an
    earlier world of this session. Picked at random so test runs side by side (other
    checkouts on one machine) do not kill each other's accounts."""
    import random

    busy = _in_use_by_processes() | _ALLOCATED
    candidates = [i for i in UID_RANGE if i not in busy]
    random.shuffle(candidates)
    out = []
    for i in candidates:
        try:
            pwd.getpwuid(i)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(i)
            continue
        except KeyError:
            pass
        out.append(i)
        if len(out) == n:
            _ALLOCATED.update(out)
            return out
    raise RuntimeError("no free ids in the private range")


def kill_uid(uid: int) -> None:
    """Kill every process of uid (as that uid, the only complete sweep)."""
    subprocess.run(["/bin/kill", "-KILL", "--", "-1"], user=uid, group=uid, extra_groups=[],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env={"PATH": "/usr/bin:/bin"})


def live_processes(uid: int) -> list[str]:
    import psutil

    out = []
    for p in psutil.process_iter(["uids", "status", "cmdline", "pid"], ad_value=None):
        if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(f"{p.info['pid']} {' '.join(p.info['cmdline'] or [])}")
    return out


PROBE_PLUGIN = textwrap.dedent('''\
    #!/usr/bin/python3
    """Wall probe plugin: reports its identity and what the kernel lets it do."""
    import errno, json, os, sys
    req = json.load(sys.stdin)
    pl = req.get("payload") or {}
    st = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        st[k] = v.strip()
    def access(path):
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path, "rb").read(1)
            return "READABLE"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    def writable(path):
        try:
            p = os.path.join(path, "probe-wrote")
            open(p, "w").write("x")
            os.unlink(p)
            return "WRITABLE"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    def setuid(uid):
        try:
            os.setuid(uid)
            return "SUCCEEDED"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    fds = []
    for n in os.listdir("/proc/self/fd"):
        try:
            os.readlink("/proc/self/fd/" + n)  # the listing's own fd is closed by now
            fds.append(int(n))
        except OSError:
            pass
    fds.sort()
    out = {
        "resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
        "caps": {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}, "nnp": st.get("NoNewPrivs"),
        "fds": fds, "cwd": os.getcwd(), "env": dict(os.environ), "umask": os.umask(0o077),
        "deny": {label: access(path) for label, path in pl.get("deny", {}).items()},
        "own": writable(os.getcwd()),
        "secrets": sorted((req.get("secrets") or {}).keys()),
        "setuid": {str(u): setuid(u) for u in pl.get("setuid", [])},
    }
    json.dump({"status": "ok", "result": out}, sys.stdout)
''')

HANG_PLUGIN = textwrap.dedent('''\
    #!/usr/bin/python3
    """Ignores SIGTERM, forks grandchildren in its group and one setsid escapee."""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for _ in range(2):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        os._exit(0)
    open(os.path.join(os.getcwd(), "hang-started"), "w").write("x")
    time.sleep(600)
''')

MARKER_PLUGIN = textwrap.dedent('''\
    #!/usr/bin/python3
    """Leaves a marker so a test can prove whether anything ran."""
    import json, sys
    req = json.load(sys.stdin)
    open(req["payload"]["marker"], "w").write("ran")
    json.dump({"status": "ok", "result": "ran"}, sys.stdout)
''')


WORLD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1", "TZ": "UTC"}
CGROUP2 = Path("/sys/fs/cgroup/unified") if os.path.isfile("/sys/fs/cgroup/unified/cgroup.procs") else Path("/sys/fs/cgroup")


def delegated_cgroup(owner: int) -> Path:
    """A cgroup v2 directory handed to ``owner`` exactly as systemd's Delegate=yes does
    (the directory and its cgroup.procs, cgroup.subtree_control and cgroup.threads)."""
    import secrets as _secrets

    path = CGROUP2 / f"dtst-{_secrets.token_hex(4)}"
    path.mkdir()
    for p in (path, path / "cgroup.procs", path / "cgroup.subtree_control", path / "cgroup.threads"):
        os.chown(p, owner, owner)
    return path


def remove_cgroup(path: Path) -> None:
    """Kill everything left in ``path`` and below, and remove it (tests leave no cgroup)."""
    from ductile.privsep.cgroup import kill_tree

    kill_tree(str(path))
    assert not path.exists(), f"cgroup {path} could not be removed"


def in_cgroup(path: Path | None, cmd: list[str]) -> list[str]:
    """``cmd`` started inside the cgroup ``path`` (how systemd starts a delegated unit)."""
    if path is None:
        return cmd
    return ["/bin/sh", "-c", f'echo $$ > {path}/cgroup.procs && exec "$@"', "in-cgroup", *cmd]


@dataclass
class World:
    base: Path
    gateway_uid: int          # 0 for a root gateway
    accounts: dict[str, int]  # name -> uid (gid == uid unless gids says otherwise)
    extra_config: str = ""
    plugins: dict[str, str] = field(default_factory=dict)
    cgroup: Path | None = None  # the gateway starts in this (delegated) cgroup
    proc_plugins: set[str] = field(default_factory=set)  # plugins whose code reads /proc: granted it
    gids: dict[str, int] = field(default_factory=dict)
    extra_roots: list[Path] = field(default_factory=list)
    state_dirs: dict[str, Path] = field(default_factory=dict)  # overrides of base/accounts/<name>

    def gid(self, name: str) -> int:
        return self.gids.get(name, self.accounts[name])

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def key(self) -> Path:
        return self.etc / "secret" / "age.key"

    @property
    def db(self) -> Path:
        return self.base / "state" / "ductile.db"

    @property
    def vault(self) -> Path:
        return self.base / "state" / "vault.age"

    def state_dir(self, name: str) -> Path:
        return self.state_dirs.get(name, self.base / "accounts" / name)

    def config_text(self) -> str:
        accts = "\n".join(f"  {n}: {{uid: {u}, gid: {self.gid(n)}, state_dir: {self.state_dir(n)}}}"
                          for n, u in self.accounts.items())
        plugins = "\n".join(f"  {p}: {self.grant(p, body)}" for p, body in self.plugins.items())
        return textwrap.dedent(f"""\
            service: {{kill_grace: 1s}}
            state: {{path: {self.db}}}
            secrets: {{age_key_file: {self.key}, vault_file: {self.vault}}}
            plugin_roots: [{", ".join(str(r) for r in [self.base / 'plugins', *self.extra_roots])}]
            api: {{enabled: false}}
            """) + (f"accounts:\n{accts}\n" if self.accounts else "") + (f"plugins:\n{plugins}\n" if plugins else "") + self.extra_config

    def grant(self, plugin: str, body: str) -> str:
        """A plugin that reads /proc needs the Landlock rule an operator would add for it."""
        if plugin not in self.proc_plugins or "filesystem" in body:
            return body
        rule = "filesystem: {read: [/proc]}"
        inner = body.strip()[1:-1].strip()
        return "{" + (inner + ", " if inner else "") + rule + "}"

    def write_config(self) -> None:
        (self.etc / "config.yaml").write_text(self.config_text())
        os.chown(self.etc / "config.yaml", self.gateway_uid, self.gateway_uid)

    def command(self, *args: str, caps: str = "+setuid,+setgid") -> list[str]:
        """argv of the real CLI as this world's gateway: root, or a non-root uid holding only
        ``caps`` — started inside ``self.cgroup`` when the world delegates one."""
        cmd = [PYTHON, "-m", "ductile", *args, "--config", str(self.etc)]
        if self.gateway_uid != 0:
            uid = self.gateway_uid
            prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            if caps:
                prefix += [f"--inh-caps=-all,{caps}", f"--ambient-caps={caps}"]
            cmd = prefix + ["--"] + cmd
        return in_cgroup(self.cgroup, cmd)

    def run(self, *args: str, caps: str = "+setuid,+setgid", input: str | None = None,
            timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args, caps=caps), capture_output=True, text=True, timeout=timeout,
                              env={**WORLD_ENV, **(env or {})}, cwd="/", input=input)

    def plugin_run(self, plugin: str, payload: dict[str, Any] | None = None, command: str = "poll",
                   **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("plugin", "run", plugin, "--command", command, "--payload", json.dumps(payload or {}), "--json", **kw)


def make_world(gateway_uid: int | None, accounts: list[str], plugins: dict[str, str],
               plugin_sources: dict[str, str] | None = None, *,
               fixed: dict[str, tuple[int, int]] | None = None) -> World:
    """gateway_uid None -> a fresh non-root uid (cap-only gateway); 0 -> root gateway.
    ``fixed``: more accounts with a given (uid, gid), e.g. real ids a test created."""
    ids = free_ids(len(accounts) + 1)
    gw = ids[-1] if gateway_uid is None else gateway_uid
    base = Path(tempfile.mkdtemp(prefix="ductile-wall-", dir="/tmp"))
    os.chmod(base, 0o711)
    world = World(base, gw, dict(zip(accounts, ids)), plugins=plugins,
                  proc_plugins={n for n, src in (plugin_sources or {}).items() if "/proc/" in src})
    for name, (uid, gid) in (fixed or {}).items():
        world.accounts[name] = uid
        world.gids[name] = gid
    for d, mode in [("etc", 0o700), ("etc/secret", 0o700), ("state", 0o700), ("accounts", 0o711), ("plugins", 0o755)]:
        (base / d).mkdir(mode=mode)
        os.chmod(base / d, mode)
    for d in ("etc", "etc/secret", "state"):
        os.chown(base / d, gw, gw)
    for name, uid in world.accounts.items():
        sd = world.state_dir(name)
        sd.mkdir(mode=0o700)
        os.chmod(sd, 0o700)
        os.chown(sd, uid, world.gid(name))
        (sd / "private.txt").write_text(f"{name}'s own data")
        os.chown(sd / "private.txt", uid, world.gid(name))
        os.chmod(sd / "private.txt", 0o600)
    for name, source in (plugin_sources or {}).items():
        d = base / "plugins" / name
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
        (d / "manifest.yaml").write_text(
            f"name: {name}\nprotocol: 2\nentrypoint: run.py\ncommands: [{{name: poll, type: read}}, {{name: handle, type: read}}]\n")
        (d / "run.py").write_text(source)
        os.chmod(d / "run.py", 0o755)
    world.write_config()
    # a real key, vault and state DB, created by the gateway itself (so it owns them)
    init = world.run("vault", "init")
    assert init.returncode == 0, init.stderr
    assert world.key.exists() and world.vault.exists() and world.db.exists()
    return world


def destroy(world: World) -> None:
    for uid in list(world.accounts.values()) + ([world.gateway_uid] if world.gateway_uid else []):
        kill_uid(uid)
    if world.cgroup is not None:
        remove_cgroup(world.cgroup)
    shutil.rmtree(world.base, ignore_errors=True)


class NamedUser:
    """A real passwd/group entry ``dtst-<8 hex>`` with a uid (= gid) from the private range,
    for the tests that need a name (runuser, --init-groups). Always deleted: its processes
    are killed first, then ``userdel`` (``-f`` as a fallback) removes user and group."""

    def __init__(self) -> None:
        import secrets

        self.uid = free_ids(1)[0]
        self.name = f"dtst-{secrets.token_hex(4)}"
        subprocess.run(["groupadd", "--system", "--gid", str(self.uid), self.name], check=True, capture_output=True)
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                               "/usr/sbin/nologin", "--uid", str(self.uid), "--gid", str(self.uid), self.name],
                              capture_output=True, text=True)
        if made.returncode != 0:
            subprocess.run(["groupdel", self.name], capture_output=True)
            raise RuntimeError(f"useradd {self.name}: {made.stderr}")

    def delete(self) -> None:
        kill_uid(self.uid)
        if subprocess.run(["userdel", self.name], capture_output=True).returncode != 0:
            subprocess.run(["userdel", "-f", self.name], capture_output=True)
        subprocess.run(["groupdel", self.name], capture_output=True)  # if USERGROUPS_ENAB left it


class Serving:
    """``ductile serve`` for a World — as root or cap-only, as ``World.command`` starts it —
    with its log, its API (when the world has a ``port`` and a token is given) and its
    ledger through the CLI: what the tests that run serve in a wall world share."""

    def __init__(self, w: World, token: str | None = None) -> None:
        self.w = w
        self.token = token
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return "\n".join((self.w.base / f"serve-{i}.log").read_text(errors="replace") for i in range(1, self.runs + 1)
                         if (self.w.base / f"serve-{i}.log").exists())

    def start(self, *, wait: bool = False) -> None:
        """Start serve; ``wait``: until its API answers /healthz."""
        from servehelp import wait_for

        self.runs += 1
        with open(self.w.base / f"serve-{self.runs}.log", "wb") as fh:
            self.proc = subprocess.Popen(self.w.command("serve"), stdout=fh, stderr=subprocess.STDOUT, cwd="/",
                                         env=WORLD_ENV)
        if wait:
            wait_for("serve to answer", self.ready, log=self.log)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()[-4000:]}")

    def ready(self) -> bool:
        self.alive()
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.w.port, timeout=30)  # type: ignore[attr-defined]
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def job(self, job_id: str) -> dict[str, Any]:
        """The job once it has settled (GET /job/ID)."""
        from servehelp import wait_for

        def done() -> dict[str, Any] | None:
            status, job = self.request("GET", f"/job/{job_id}")
            assert status == 200, job
            return job if job["status"] not in ("queued", "running") else None

        return wait_for(f"job {job_id}", done, log=self.log, interval=0.2)

    def api_jobs(self, plugin: str) -> list[dict[str, Any]]:
        """Whole jobs through the API: the listing holds summaries, each job's own answer the rest."""
        listed = self.request("GET", f"/jobs?plugin={plugin}&limit=1000")[1]["jobs"]
        return [self.request("GET", f"/job/{j['id']}")[1] for j in listed]

    def jobs(self, plugin: str, status: str) -> list[dict[str, Any]]:
        """Whole jobs through the CLI (``job list`` summaries, then ``job show`` each)."""
        self.alive()
        listed = self.w.run("job", "list", "--json", "--plugin", plugin, "--status", status)
        if listed.returncode != 0:
            return []
        return [json.loads(self.w.run("job", "show", j["id"], "--json").stdout)["job"] for j in json.loads(listed.stdout)]

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        return self.proc.wait(60)
