"""deploy/install.sh: staged into a scratch root it builds the SPEC layout, a second run
changes nothing, a taken uid stops it before any directory is handed out, an operator's
own rendered files survive, and a dry run touches nothing at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO

INSTALL = REPO / "deploy" / "install.sh"
SYSTEMD = REPO / "deploy" / "systemd"


def install(*args: str, env: dict[str, str] | None = None, script: Path = INSTALL,
            uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script (as ``uid``, with gid = uid, when given: numeric, so no passwd entry is needed)."""
    argv = ["bash", str(script), *args]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root: mode, uid, gid and a content hash (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                body = ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("install.sh creates users and chowns directories: run the suite as root")
    for tool in ("systemd-sysusers", "systemd-tmpfiles"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def test_bash_syntax() -> None:
    proc = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_help_lists_every_option() -> None:
    proc = install("--help")
    assert proc.returncode == 0
    for opt in ("--root", "--dry-run", "--no-venv", "--with-admin", "--replace"):
        assert opt in proc.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--bogus"], "unknown option --bogus"),
    (["--root", "relative/dir", "--dry-run"], "not absolute"),
    (["--root", "/", "--dry-run"], "host itself"),
])
def test_bad_arguments_are_one_line_refusals(args: list[str], needle: str) -> None:
    proc = install(*args)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "fix:" in proc.stderr


@pytest.mark.needs_tool("systemd-sysusers")
def test_dry_run_into_a_root_creates_nothing(tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    root = tmp_path / "stage"
    proc = install("--root", str(root), "--dry-run", "--with-admin")
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()
    assert f"would run: {root}/opt/ductile/venv/bin/python -m pip install" in proc.stdout
    assert f"would run: systemd-sysusers --root={root} ductile.conf" in proc.stdout
    assert f"would run: systemd-tmpfiles --create --root={root} ductile-admin.conf" in proc.stdout
    root.mkdir()
    assert install("--root", str(root), "--dry-run", "--no-venv").returncode == 0
    assert list(root.iterdir()) == []


def test_dry_run_on_the_host_calls_no_changing_command(tmp_path: Path) -> None:
    # every command that could change the host is replaced by a recorder on PATH
    bindir, log = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    for tool in ("install", "ln", "cp", "mv", "rm", "mkdir", "chmod", "chown", "useradd", "groupadd",
                 "systemd-sysusers", "systemd-tmpfiles", "systemctl", "pip", "python3"):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    proc = install("--dry-run", "--no-venv", "--with-admin", env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert not log.exists(), log.read_text()
    assert "would run: systemd-sysusers ductile.conf" in proc.stdout
    assert "Next steps" in proc.stdout


@pytest.mark.privileged
def test_refuses_to_run_as_a_non_root_user_without_dry_run() -> None:
    requires_root()
    # a copy the unprivileged user can read, whatever the checkout's own permissions
    scratch = Path(tempfile.mkdtemp(prefix="ductile-install-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "deploy", scratch / "deploy")
        for p in [scratch, *scratch.rglob("*")]:
            p.chmod(0o755)
        proc = install("--no-venv", script=scratch / "deploy" / "install.sh", uid=65534)
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "must run as root" in proc.stderr and "--dry-run" in proc.stderr
    finally:
        shutil.rmtree(scratch)


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_staged_install_builds_the_layout_and_is_idempotent(tmp_path: Path) -> None:
    requires_root()
    root = tmp_path / "stage"
    first = install("--root", str(root), "--no-venv", "--with-admin")
    assert first.returncode == 0, first.stdout + first.stderr
    before = snapshot(root)
    second = install("--root", str(root), "--no-venv", "--with-admin")
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(root) == before
    for f in ("/etc/sysusers.d/ductile.conf", "/etc/tmpfiles.d/ductile.conf", "/etc/systemd/system/ductile.service",
              "/etc/systemd/system/ductile-admin.service"):
        assert f"unchanged: {f}" in second.stdout

    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()}
    gw, admin = int(users["ductile"][2]), int(users["ductile-admin"][2])
    assert users["ductile-default"][2:4] == ["1001", "1001"] and users["ductile-untrusted"][2:4] == ["1002", "1002"]
    want = {
        "etc/ductile": (0o700, gw, gw), "etc/ductile/secret": (0o700, gw, gw),
        "var/lib/ductile": (0o711, gw, gw), "var/lib/ductile/accounts": (0o711, gw, gw),
        "var/lib/ductile/accounts/default": (0o700, 1001, 1001),
        "var/lib/ductile/accounts/untrusted": (0o700, 1002, 1002),
        "opt/ductile/plugins": (0o755, 0, 0),
        "etc/ductile-admin": (0o700, admin, admin), "var/lib/ductile-admin": (0o700, admin, admin),
    }
    for rel, (mode, uid, gid) in want.items():
        st = os.stat(root / rel)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), rel
    assert (root / "etc/systemd/system/ductile.service").read_text() == (SYSTEMD / "ductile.service").read_text()
    assert stat.S_IMODE(os.stat(root / "etc/systemd/system/ductile.service").st_mode) == 0o644
    # the pages named by the unit's Documentation= are installed with it
    for page in (REPO / "man").glob("*.[15]"):
        assert (root / f"usr/local/share/man/man{page.suffix[1:]}" / page.name).read_bytes() == page.read_bytes()
    # the summary reports what is on disk; the next steps never include placing a secret
    assert "/var/lib/ductile/accounts/default" in first.stdout and "0700 ductile-default" in first.stdout
    assert "skipped: systemctl daemon-reload (staging" in first.stdout
    assert "ductile vault init" in first.stdout and "ductile account verify" in first.stdout
    assert not list(root.rglob("age.key")) and not list(root.rglob("config.yaml")) and not list(root.rglob("*.age"))


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_a_taken_uid_stops_the_install_before_any_directory_is_handed_out(tmp_path: Path) -> None:
    requires_root()
    root = tmp_path / "stage"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nalice:x:1001:\n")
    proc = install("--root", str(root), "--no-venv")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("install.sh: error: /etc/sysusers.d/ductile.conf: group ductile-default")
    assert "1001 belongs to alice" in last and "fix:" in last
    assert not (root / "var/lib/ductile").exists()


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_an_operators_rendered_file_is_kept_unless_replace(tmp_path: Path) -> None:
    requires_root()
    root = tmp_path / "stage"
    mine = (SYSTEMD / "ductile.tmpfiles.conf").read_text() + "# rendered from my own config\n"
    (root / "etc/tmpfiles.d").mkdir(parents=True)
    (root / "etc/tmpfiles.d/ductile.conf").write_text(mine)
    proc = install("--root", str(root), "--no-venv")
    assert proc.returncode == 0, proc.stderr
    assert "kept: /etc/tmpfiles.d/ductile.conf differs" in proc.stdout
    assert (root / "etc/tmpfiles.d/ductile.conf").read_text() == mine
    proc = install("--root", str(root), "--no-venv", "--replace")
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/tmpfiles.d/ductile.conf").read_text() == (SYSTEMD / "ductile.tmpfiles.conf").read_text()


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_staged_install_with_the_venv_runs_the_installed_package(tmp_path: Path) -> None:
    requires_root()
    root = tmp_path / "stage"
    for run_no in (1, 2):  # the second run upgrades the package inside the existing venv
        proc = install("--root", str(root))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "venv exists: /opt/ductile/venv" in proc.stdout
    venv = root / "opt/ductile/venv"
    assert os.readlink(root / "usr/local/bin/ductile") == "/opt/ductile/venv/bin/ductile"
    assert stat.S_IMODE(os.stat(venv).st_mode) == 0o755
    # dropped accounts run this interpreter and import this package: all of it is o+r, dirs o+x
    for dirpath, _, files in os.walk(venv):
        assert os.stat(dirpath).st_mode & 0o005 == 0o005, dirpath
        for f in files:
            st = os.lstat(Path(dirpath) / f)
            assert stat.S_ISLNK(st.st_mode) or st.st_mode & 0o004, f"{dirpath}/{f}"
    base = os.path.realpath(venv / "bin/python")
    check = subprocess.run([str(REPO / "deploy/find-python.sh"), base], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    rendered = subprocess.run([str(venv / "bin/ductile"), "deploy", "render", "unit", "--config",
                               str(REPO / "deploy/config/ductile.yaml"), "--config-dir", "/etc/ductile"],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == (SYSTEMD / "ductile.service").read_text()
