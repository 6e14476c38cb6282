"""The exec'd drop (``privsep.dropper``), proven with real processes, through ``capsh`` and
through ``setpriv``, as a root gateway and as a cap-only one (non-root, CAP_SETUID+CAP_SETGID
handed over as ambient capabilities, as systemd does; the gateway clears them at start as
serve does). What is asserted comes from inside the plugin: its own /proc/<pid>/status.
The attack: a user and a group named after the account's numeric ids, mapped to root,
which ``setpriv`` prefers to the number (``capsh`` takes numbers only).
Every test here needs root; under CI a skip is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wallworld import WORLD_ENV, free_ids, kill_uid, require_root

pytestmark = pytest.mark.privileged

MODES = ["root", "cap-only"]
VIAS = ["capsh", "setpriv"]

GATEWAY = r'''
import json, sys
from ductile.config.model import ServiceConfig
from ductile.errors import DuctileError
from ductile.privsep import dropper, dropper_host, kernel
from ductile.privsep.accounts import ResolvedAccount
from ductile.privsep.spawnspec import build_spawn_spec
from ductile.runtime.spawn import drop_choice, spawn
a = json.loads(sys.argv[1])
kernel.harden_gateway()
if a.get("via"):  # this test's dropper, not the host's first choice
    tool = {t.kind: t for t in dropper.TOOLS}[a["via"]]
    path = next(p for p in tool.paths if dropper_host.judge_chain(dropper_host.chain_facts(p)) is None)
    dropper_host.host_dropper = lambda: dropper.HostDropper(path, tool.kind, "")
if a.get("no_ambient"):  # a gateway that forgot to hand setpriv its capabilities
    dropper_host.needs_ambient = lambda: False
service = ServiceConfig(plugin_env_passthrough=tuple(a.get("passthrough", ())))
spec = build_spawn_spec(ResolvedAccount("acct", a["uid"], a["gid"], a["state_dir"], "granted"), a["plugin"],
                        service, a.get("env", {}), timeout=20, unconfined_workdir="/")
via = drop_choice(spec).via
out = {"via": via.kind if via else None}
import threading
cancel = threading.Event()
if a.get("cancel"):  # serve's shutdown deadline, reached while the trampoline starts
    cancel.set()
try:
    raw = spawn(spec, b"{}", cancel=cancel)
    out.update(rc=raw.returncode, stdout=raw.stdout.decode(), stderr=raw.stderr_tail.decode(),
               cancelled=raw.cancelled)
except DuctileError as err:
    out.update(kind=err.kind, line=err.one_line())
# every thread the gateway still has, the one that spawned included: no capability to hand on
import os
held = {}
for tid in os.listdir("/proc/self/task"):
    for line in open(f"/proc/self/task/{tid}/status"):
        if line.startswith(("CapInh:", "CapAmb:")) and int(line.split()[1], 16):
            held[tid] = line.strip()
out["threads_holding"] = held
print(json.dumps(out))
'''

PLUGIN = """#!/bin/sh
touch "$HOME/ran"
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb):' /proc/$$/status
"""


# A hostile plugin: the dropper is executable from inside its allowlist, so it tries to
# use it (and the kernel directly, through Python) to get back to root or the gateway.
ESCALATE = """#!/bin/sh
touch "$HOME/ran"
for tool in /usr/sbin/capsh /usr/bin/setpriv; do
  [ -x "$tool" ] || continue
  case "$tool" in
    *capsh) "$tool" --uid=0 --gid=0 --groups= -- -c 'echo "ESCALATED by capsh $(id -u)"' 2>/dev/null ;;
    *) "$tool" --reuid=0 --regid=0 --clear-groups -- /bin/sh -c 'echo "ESCALATED by setpriv $(id -u)"' 2>/dev/null ;;
  esac
  echo "$tool exit $?"
done
"""


class Host:
    def __init__(self) -> None:
        self.account, self.gateway = free_ids(2)
        self.base = Path(tempfile.mkdtemp(prefix="ductile-drop-", dir="/tmp"))
        os.chmod(self.base, 0o711)
        self.state_dir = self.base / "acct"
        self.state_dir.mkdir(mode=0o700)
        os.chown(self.state_dir, self.account, self.account)
        plugins = self.base / "plugin"
        plugins.mkdir(mode=0o755)
        self.plugin = plugins / "run"
        self.plugin.write_text(PLUGIN)
        os.chmod(self.plugin, 0o755)
        self.escalate = plugins / "escalate"
        self.escalate.write_text(ESCALATE)
        os.chmod(self.escalate, 0o755)

    def gateway_argv(self, mode: str, **extra: object) -> list[str]:
        args = {"uid": self.account, "gid": self.account, "state_dir": str(self.state_dir),
                "plugin": str(self.plugin)} | extra
        argv = [sys.executable, "-c", GATEWAY, json.dumps(args)]
        if mode == "cap-only":
            argv = ["setpriv", f"--reuid={self.gateway}", f"--regid={self.gateway}", "--clear-groups",
                    "--inh-caps=+setuid,+setgid", "--ambient-caps=+setuid,+setgid", "--", *argv]
        return argv

    def run(self, argv: list[str]) -> dict:  # type: ignore[type-arg]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120, env=dict(WORLD_ENV))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    @property
    def ran(self) -> bool:
        return (self.state_dir / "ran").exists()


@pytest.fixture
def host():  # type: ignore[no-untyped-def]
    require_root()
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is part of the drop and must be installed")
    h = Host()
    yield h
    kill_uid(h.account)
    shutil.rmtree(h.base, ignore_errors=True)


def _status(stdout: str) -> dict[str, list[str]]:
    return {k: v.split() for k, _, v in (line.partition(":") for line in stdout.splitlines())}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("mode", MODES)
def test_the_exec_d_drop_leaves_the_plugin_nothing(host: Host, mode: str, via: str) -> None:
    out = host.run(host.gateway_argv(mode, via=via))
    assert out["via"] == via, out
    assert out["rc"] == 0, out
    st = _status(out["stdout"])
    u = str(host.account)
    assert st["Uid"] == [u] * 4 and st["Gid"] == [u] * 4, st
    assert st["Groups"] == [], st
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert st[name] == ["0000000000000000"], (name, st)
    assert host.ran
    assert out["threads_holding"] == {}, out  # the ambient set was raised only in the spawning thread, now gone
    assert "ready" not in out["stderr"]  # the trampoline's ready line is the gateway's, not the job's


def test_the_host_prefers_capsh() -> None:
    require_root()
    from ductile.privsep import dropper_host

    dropper_host.forget()
    assert dropper_host.host_dropper().kind == "capsh", dropper_host.host_dropper()


def _named_after_ids(host: Host, tmp_path: Path) -> list[str]:
    """A private mount namespace whose passwd and group name a user and a group after the
    account's numeric ids, both mapped to root (the host's files are untouched)."""
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + f"{host.account}:x:0:0::/:/bin/sh\n")
    group.write_text(Path("/etc/group").read_text() + f"{host.account}:x:0:\n")
    os.chmod(tmp_path, 0o755)
    for f in (passwd, group):
        os.chmod(f, 0o644)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"', "sh",
            str(passwd), str(group)]


@pytest.mark.parametrize("mode", MODES)
def test_a_user_named_after_the_uid_cannot_redirect_the_drop(host: Host, mode: str, tmp_path: Path) -> None:
    """setpriv resolves ``--reuid=N`` as a user name first. A passwd entry named N with uid
    0 (and a group named N with gid 0) turns its drop into root; the gateway sees that in
    the waiting trampoline's status and the plugin never runs."""
    out = host.run(_named_after_ids(host, tmp_path) + host.gateway_argv(mode, via="setpriv"))
    assert out["via"] == "setpriv", out
    assert out.get("kind") == "drop_failed", out
    assert "not dropped to account acct: it runs as uid 0/0/0/0" in out["line"], out
    assert f"getent passwd {host.account}" in out["line"], out  # the fix names the lookup that finds the entry
    assert not host.ran


@pytest.mark.parametrize("mode", MODES)
def test_capsh_takes_the_ids_as_numbers_whatever_names_exist(host: Host, mode: str, tmp_path: Path) -> None:
    """The same names, through capsh: no lookup, the drop is the account's and the job runs."""
    out = host.run(_named_after_ids(host, tmp_path) + host.gateway_argv(mode, via="capsh"))
    assert out["via"] == "capsh" and out["rc"] == 0, out
    st = _status(out["stdout"])
    assert st["Uid"] == [str(host.account)] * 4 and st["Gid"] == [str(host.account)] * 4, st
    assert host.ran


@pytest.mark.parametrize("mode", MODES)
def test_an_environment_the_loader_obeys_keeps_the_in_process_drop(host: Host, mode: str) -> None:
    """``LD_PRELOAD`` passed through by the operator must not reach a program that holds
    the gateway's capabilities: the job is dropped by subprocess in the child instead."""
    out = host.run(host.gateway_argv(mode, passthrough=["LD_PRELOAD"], env={"LD_PRELOAD": ""}))
    assert out["via"] is None, out
    assert out["rc"] == 0, out
    st = _status(out["stdout"])
    assert st["Uid"] == [str(host.account)] * 4 and st["CapEff"] == ["0000000000000000"], st
    assert host.ran


@pytest.mark.parametrize("via", VIAS)
def test_a_refused_exec_d_drop_is_account_drop_failed(host: Host, via: str) -> None:
    """A cap-only gateway that does not raise the ambient set: the dropper holds no
    capability, the kernel refuses its drop, and the job fails as a refused drop, plugin
    not run."""
    out = host.run(host.gateway_argv("cap-only", no_ambient=True, via=via))
    assert out["via"] == via, out
    assert out.get("kind") == "drop_failed", out
    assert f"{via} could not drop to uid" in out["line"], out
    assert not host.ran


def test_a_cancel_before_go_runs_nothing(host: Host) -> None:
    """Shutdown while the trampoline is still starting: no "go" is sent, the job is
    reported cancelled (re-queued, not failed), and the plugin never ran."""
    out = host.run(host.gateway_argv("root", cancel=True))
    assert out["via"] and out["cancelled"] is True and out["stdout"] == "", out
    assert not host.ran


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("mode", MODES)
def test_a_plugin_cannot_use_the_dropper_to_climb_back(host: Host, mode: str, via: str) -> None:
    """The program that dropped the job is on the plugin's PATH too. Run by the plugin it
    holds no capability, so asking it for uid 0 fails, from a root and a cap-only gateway."""
    out = host.run(host.gateway_argv(mode, via=via, plugin=str(host.escalate)))
    assert out["via"] == via and out["rc"] == 0, out
    assert host.ran
    assert "ESCALATED" not in out["stdout"], out
    lines = [ln for ln in out["stdout"].splitlines() if " exit " in ln]
    assert lines and all(not ln.endswith(" exit 0") for ln in lines), out
