"""The first-time runbook of docs/deployment.md, run as written on a clean staged host.

The host is a directory: a base system (passwd/group with the host's system accounts only,
PAM, nsswitch), the host's /usr bound read-only, and whatever install.sh puts there.
install.sh stages into it with --root (it needs pip, which lives outside); the tree is then
copied into a second directory, and every later step runs *inside* that copy with chroot,
in a private mount namespace (nothing mounted outlives the step), at the final paths
(/etc/ductile, /opt/ductile/venv, /usr/local/bin/ductile). That proves the staged tree works
once copied to /, and that each documented command works where an operator types it.

What this machine cannot do is stood in for, each in one place: an editor (the test edits
the account ids and api.listen, as step 2 tells the operator to review them); systemd as
PID 1 (``systemctl enable --now`` is the unit's ExecStart, started with setpriv from the
installed unit's User=, AmbientCapabilities=, CapabilityBoundingSet=, NoNewPrivileges=,
UMask= and WorkingDirectory=, read here independently of ductile's own parser; journalctl
is its stderr); and ``git pull``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO
from servehelp import free_port, wait_for
from wallworld import free_ids, kill_uid, require_root

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("systemd-sysusers")]

DOC = REPO / "docs" / "deployment.md"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ETC = ("pam.d", "security", "nsswitch.conf", "login.defs", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
            "hosts", "localtime")


def runbook() -> dict[str, str]:
    """Every ```sh block of the deployment guide that a ``<!-- runbook: NAME -->`` marks."""
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- runbook: ([\w-]+) -->\n```sh\n(.*?)```", text, re.S)}


def section_block(title: str) -> str:
    """The first ```sh block under a ## heading."""
    text = DOC.read_text().split(f"## {title}\n", 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def lines(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class Host:
    """A clean host in a directory, and a way to run commands in it."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def mounts(self) -> str:
        r = self.root
        out = ["set -e"]
        for d in sorted(os.listdir("/usr")):
            if d != "local" and os.path.isdir(f"/usr/{d}"):
                out += [f"mount --bind /usr/{d} {r}/usr/{d}", f"mount -o remount,bind,ro {r}/usr/{d}"]
        out += [f"mount --bind {REPO} {r}/src", f"mount -o remount,bind,ro {r}/src",
                f"mount -t proc proc {r}/proc", f"mount --rbind /dev {r}/dev", f"mount -t tmpfs tmpfs {r}/run"]
        return "\n".join(out)

    def argv(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """``argv`` run inside the host: its own mount namespace, chroot, a login-like env."""
        base = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
        inner = shlex.join(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv])
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                f"{self.mounts()}\ncd {self.root}\nexec chroot {self.root} /bin/sh -c 'cd /src && exec \"$@\"' sh {inner}"]

    def sh(self, script: str, env: dict[str, str] | None = None, input: str | None = None,
           ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(["/bin/bash", "-euo", "pipefail", "-c", script], env), capture_output=True,
                              text=True, input=input, timeout=300)
        if ok:
            assert proc.returncode == 0, f"$ {script}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        return proc

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")


def base_system(root: Path) -> None:
    """A freshly installed Debian, as far as ductile cares: system accounts, PAM, NSS."""
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    for d in ("etc", "proc", "dev", "run", "src", "var", "opt"):
        (root / d).mkdir()
    (root / "root").mkdir(mode=0o700)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "usr").mkdir()
    for d in os.listdir("/usr"):
        if d != "local" and os.path.isdir(f"/usr/{d}"):
            (root / "usr" / d).mkdir()
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            (root / link).symlink_to(os.readlink(f"/{link}"))
    # the host's system accounts (below 1000, and nobody): never a person, never a test's
    users = [p for p in pwd.getpwall() if p.pw_uid < 1000 or p.pw_uid == 65534]
    groups = [g for g in grp.getgrall() if g.gr_gid < 1000 or g.gr_gid == 65534]
    (root / "etc/passwd").write_text("".join(f"{p.pw_name}:x:{p.pw_uid}:{p.pw_gid}:{p.pw_gecos}:{p.pw_dir}:{p.pw_shell}\n"
                                             for p in users))
    (root / "etc/group").write_text("".join(f"{g.gr_name}:x:{g.gr_gid}:{','.join(g.gr_mem)}\n" for g in groups))
    (root / "etc/shadow").write_text("".join(f"{p.pw_name}:*:19000:0:99999:7:::\n" for p in users))
    (root / "etc/gshadow").write_text("".join(f"{g.gr_name}:*::\n" for g in groups))
    for f in ("shadow", "gshadow"):
        os.chmod(root / "etc" / f, 0o640)
    for name in BASE_ETC:
        src = Path("/etc") / name
        if src.is_symlink():
            (root / "etc" / name).symlink_to(os.readlink(src))
        elif src.is_dir():
            shutil.copytree(src, root / "etc" / name, symlinks=True)
        elif src.exists():
            shutil.copy2(src, root / "etc" / name)


def install_sh(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``deploy/install.sh ARGS`` on the host this root stands for (``--root`` added)."""
    return subprocess.run(["bash", str(REPO / "deploy/install.sh"), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


def unit_settings(text: str) -> dict[str, str]:
    """Last assignment of each key in [Service] (ductile's unit sets each once)."""
    out: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def start_like_systemd(host: Host, journal: Path) -> subprocess.Popen[bytes]:
    """``systemctl start ductile.service`` without systemd: ExecStart under the unit's credentials."""
    unit = unit_settings(host.path("/etc/systemd/system/ductile.service").read_text())
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in unit["AmbientCapabilities"].split())
    bounding = ",".join("+" + c.removeprefix("CAP_").lower() for c in unit["CapabilityBoundingSet"].split())
    setpriv = ["setpriv", f"--reuid={unit['User']}", f"--regid={unit['Group']}", "--init-groups",
               f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{bounding}"]
    if unit["NoNewPrivileges"] == "yes":
        setpriv.append("--no-new-privs")
    script = (f"umask {unit['UMask']} && cd {unit['WorkingDirectory']} && exec "
              + " ".join([*setpriv, "--", unit["ExecStart"]]))
    with open(journal, "wb") as log:
        proc = subprocess.Popen(host.argv(["/bin/sh", "-c", script], {"HOME": "/nonexistent"}), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    host.procs.append(proc)
    return proc


def run_oneshot_like_systemd(host: Host, name: str) -> subprocess.CompletedProcess[str]:
    """``systemctl start NAME`` for a Type=oneshot unit with no capabilities: its ExecStart,
    as its User=/Group=, with its UMask= and an empty bounding set; the output is its journal."""
    unit = unit_settings(host.path(f"/etc/systemd/system/{name}").read_text())
    assert unit["Type"] == "oneshot" and unit["CapabilityBoundingSet"] == "", unit
    setpriv = ["setpriv", f"--reuid={unit['User']}", f"--regid={unit['Group']}", "--init-groups",
               "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    script = f"umask {unit['UMask']} && cd / && exec " + " ".join([*setpriv, "--", unit["ExecStart"]])
    return subprocess.run(host.argv(["/bin/sh", "-c", script], {"HOME": "/nonexistent"}), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def http(port: int, path: str, token: str | None = None, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError:
        return 0, {}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    require_root()
    d = Path(tempfile.mkdtemp(prefix="ductile-runbook-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_runbook_gives_a_verified_enforcing_gateway(scratch: Path) -> None:
    steps = runbook()
    assert list(steps) == ["install", "install-with-ids", "config", "vault", "token", "plugin", "lock", "verify",
                           "start", "check", "backups"]
    stage = scratch / "stage"
    base_system(stage)
    host = Host(stage)
    ids = free_ids(2)

    # 1. the plain install refuses nothing on this clean host (checked with a dry run: the
    #    shipped ids 1001/1002 are outside the ids this suite may run processes as) ...
    assert lines(steps["install"]) == ["deploy/install.sh"]
    dry = install_sh(stage, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "ids checked: no conflict" in dry.stdout
    # ... so the test takes the documented way to its own ids: a copy of the config, installed from
    copy, install = lines(steps["install-with-ids"])
    host.sh(copy)
    draft = host.path("/root/ductile.yaml")
    draft.write_text(draft.read_text().replace("uid: 1001, gid: 1001", f"uid: {ids[0]}, gid: {ids[0]}")
                     .replace("uid: 1002, gid: 1002", f"uid: {ids[1]}, gid: {ids[1]}"))
    assert install.split()[:2] == ["deploy/install.sh", "--config"]
    proc = install_sh(stage, "--config", str(host.path(install.split()[2])))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rendered from" in proc.stdout and "Next steps" in proc.stdout

    # the staged tree, copied somewhere else, names its final paths only
    root = scratch / "host"
    subprocess.run(["cp", "-a", str(stage), str(root)], check=True)
    leaks = subprocess.run(["grep", "-rlF", "--exclude=direct_url.json", str(stage), *(str(root / d) for d in
                            ("etc", "opt", "var", "usr/local"))], capture_output=True, text=True)
    assert leaks.stdout == "", f"files in the staged tree name the staging directory:\n{leaks.stdout}"
    shutil.rmtree(stage)
    host = Host(root)
    venv = host.path("/opt/ductile/venv")
    assert (venv / "bin/ductile").read_text().splitlines()[0] == "#!/opt/ductile/venv/bin/python"
    for dirpath, _, files in os.walk(venv):  # accounts run this interpreter and import this package
        assert os.stat(dirpath).st_mode & 0o005 == 0o005, dirpath
        for f in files:
            st = os.lstat(Path(dirpath) / f)
            assert stat.S_ISLNK(st.st_mode) or st.st_mode & 0o004, f"{dirpath}/{f}"
    # the gateway's uid is the one systemd-sysusers picked in the staged passwd
    gw_uid = int(next(ln.split(":")[2] for ln in host.path("/etc/passwd").read_text().splitlines()
                      if ln.startswith("ductile:")))
    assert gw_uid not in ids

    try:
        # 2. config: the copy from step 1, then "review it" (a free port for api.listen)
        [config] = lines(steps["config"])
        host.sh(config.replace("deploy/config/ductile.yaml", "/root/ductile.yaml"))
        host.sh(config)  # pasted twice, it changes nothing
        cfg = host.path("/etc/ductile/config.yaml")
        st = os.stat(cfg)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (gw_uid, 0o600)
        port = free_port()
        cfg.write_text(cfg.read_text().replace("listen: 127.0.0.1:8080", f"listen: 127.0.0.1:{port}"))

        # 3-5. vault, API token, a first plugin: exactly as written
        for name in ("vault", "token", "plugin"):
            host.sh(steps[name])
        assert os.stat(host.path("/etc/ductile/secret/age.key")).st_uid == gw_uid
        token = host.path("/root/ductile-api-ops.token").read_text()
        assert len(token) >= 40 and stat.S_IMODE(os.stat(host.path("/root/ductile-api-ops.token")).st_mode) == 0o600

        # 6. lock: preview, then commit with the code it printed
        preview, commit = lines(steps["lock"])
        out = host.sh(preview).stdout
        assert "+ new      echo" in out
        code = re.search(r"confirmation code: (\w+)", out)
        assert code, out
        host.sh(commit.split("#")[0].replace("CODE", code.group(1)))

        # 7. verify, as the unit runs the gateway: no ERROR, the wall holds, echo runs as default
        doctor, verify, explain = lines(steps["verify"])
        out = host.sh(doctor)
        assert "ERROR" not in out.stdout + out.stderr, out.stdout
        assert f"boot gate under ductile.service [capability+accounts] -> enforce (as uid {gw_uid})" in out.stdout
        out = host.sh(verify)
        assert "wall HELD: 0 breach(es), 0 check(s) not run" in out.stdout, out.stdout
        assert f"uid {gw_uid})" in out.stdout  # the probes came from the unit's uid, not root
        out = host.sh(explain)
        assert f"runs as: default (uid {ids[0]}, gid {ids[0]})" in out.stdout and "lock: locked" in out.stdout

        # 8. start: the unit's ExecStart with its credentials; the journal is its output
        start, journal_line = lines(steps["start"])
        assert start == "systemctl enable --now ductile.service" and journal_line.startswith("journalctl -u ductile")
        journal = scratch / "journal"
        gateway = start_like_systemd(host, journal)
        wait_for("the posture line", lambda: "privsep enforcing" in journal.read_text() or gateway.poll() is not None,
                 log=journal.read_text)
        assert gateway.poll() is None, journal.read_text()
        wait_for("the API", lambda: http(port, "/healthz")[0] == 200, log=journal.read_text)

        # 9. check: health, one job through the API with the token, the ledger
        out = host.sh(steps["check"].replace("127.0.0.1:8080", f"127.0.0.1:{port}")).stdout
        health = json.loads(out.splitlines()[0])
        assert health["posture"] == "enforce"
        job_id = json.loads(out.splitlines()[1])["job_id"]
        done = wait_for("the echo job", lambda: (lambda r: r if r[1].get("status") in ("succeeded", "failed", "dead")
                                                 else None)(http(port, f"/job/{job_id}", token)), log=journal.read_text)
        assert done[1]["status"] == "succeeded", done
        ledger = host.sh(lines(steps["check"])[-1]).stdout
        assert job_id in ledger and "succeeded" in ledger
        shown = json.loads(host.sh(f"runuser -u ductile -- ductile job show {job_id} --json --config /etc/ductile").stdout)
        assert str(ids[0]) in json.dumps(shown)

        # 10. backups: install.sh installed the service and the timer; the timer is what gets
        #     enabled (it starts the service daily), and one run now, while the gateway serves,
        #     leaves a private archive without the age key
        enable, start_backup = lines(steps["backups"])
        assert enable == "systemctl enable --now ductile-backup.timer"
        assert start_backup.startswith("systemctl start ductile-backup.service && journalctl -u ductile-backup")
        timer = host.path("/etc/systemd/system/ductile-backup.timer").read_text()
        assert "OnCalendar=daily" in timer and "WantedBy=timers.target" in timer
        backups = host.path("/var/backups/ductile")
        assert (os.stat(backups).st_uid, stat.S_IMODE(os.stat(backups).st_mode)) == (gw_uid, 0o700)
        ran = run_oneshot_like_systemd(host, "ductile-backup.service")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        [archive] = list(backups.iterdir())
        st = os.stat(archive)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (gw_uid, 0o600) and archive.name.endswith(".tar.gz")
        members = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True).stdout
        assert "ductile.db" in members and "vault.age" in members and "age.key" not in members, members

        # stop: SIGTERM drains and exits cleanly
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=120) == 0, journal.read_text()

        # Upgrading: a re-run with a config in place renders from it, upgrades in place and
        # touches none of the operator's files
        upgrade = lines(section_block("Upgrading"))
        assert upgrade[1] == "deploy/install.sh"
        mine = {p: host.path(p).read_bytes() for p in ("/etc/ductile/config.yaml", "/etc/ductile/.checksums",
                                                       "/etc/ductile/secret/age.key", "/var/lib/ductile/vault.age")}
        proc = install_sh(root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "rendered from /etc/ductile/config.yaml" in proc.stdout and "Upgrade: your /etc/ductile/config.yaml" in proc.stdout
        assert "install -m" not in proc.stdout and "vault init" not in proc.stdout
        assert "unchanged: /etc/systemd/system/ductile.service" in proc.stdout
        assert {p: host.path(p).read_bytes() for p in mine} == mine
        for line in (upgrade[2], upgrade[4]):
            out = host.sh(line)
            assert "ERROR" not in out.stdout and "BREACH" not in out.stdout
    finally:
        for p in host.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for uid in ids:
            kill_uid(uid)
