"""deploy/install.sh: staged into a scratch root it builds the SPEC layout, a second run
changes nothing, a taken id stops it before anything is written (and the recovery it prints
works as printed), upgrades replace what nobody touched and keep what the operator changed,
and a dry run touches nothing at all. The staged venv at its final path, and the whole
runbook, are proven in tests/test_runbook.py."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
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
    for opt in ("--root", "--dry-run", "--config", "--no-venv", "--with-admin", "--replace"):
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
              "/etc/systemd/system/ductile-admin.service", "/etc/systemd/system/ductile-backup.service",
              "/etc/systemd/system/ductile-backup.timer", "/etc/systemd/system/ductile-admin-backup.timer"):
        assert f"unchanged: {f}" in second.stdout
    # the backup units are installed, tracked like the others, and the summary says to enable the timer
    manifest = (root / "opt/ductile/install-manifest").read_text()
    for name in ("ductile-backup.service", "ductile-backup.timer", "ductile-admin-backup.service",
                 "ductile-admin-backup.timer"):
        installed = root / "etc/systemd/system" / name
        assert installed.read_text() == (SYSTEMD / name).read_text()
        assert f"{hashlib.sha256(installed.read_bytes()).hexdigest()}  /etc/systemd/system/{name}" in manifest
    assert "9. backups: systemctl enable --now ductile-backup.timer" in first.stdout

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
        "var/backups/ductile": (0o700, gw, gw),
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


ALICE_PASSWD = "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/bash\n"
ALICE_GROUP = "root:x:0:\nalice:x:1001:\n"


def host_with_alice(root: Path) -> None:
    """A staged host whose second human user holds uid and gid 1001, the shipped default."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(ALICE_PASSWD)
    (root / "etc/group").write_text(ALICE_GROUP)


@pytest.fixture
def alice_host(tmp_path: Path) -> Path:
    requires_root()
    root = tmp_path / "stage"
    host_with_alice(root)
    return root


def entries(root: Path, db: str) -> dict[str, list[str]]:
    return {ln.split(":")[0]: ln.split(":") for ln in (root / "etc" / db).read_text().splitlines()}


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_a_taken_id_stops_the_install_before_anything_is_written(alice_host: Path) -> None:
    root = alice_host
    before = snapshot(root)
    for dry in ([], ["--dry-run"]):  # a dry run checks the ids too, and fails the same way
        proc = install("--root", str(root), "--no-venv", *dry)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("install.sh: error: ")]
        # the account's user comes first: that is what an operator reads as "the account"
        assert errors[0] == ("install.sh: error: /etc/sysusers.d/ductile.conf: user ductile-default needs uid 1001, "
                             "which belongs to user alice")
        assert ("install.sh: error: /etc/sysusers.d/ductile.conf: group ductile-default needs gid 1001, "
                "which belongs to group alice") in errors
        assert "nothing was written" in proc.stderr and f"--root {root} --config /root/ductile.yaml" in proc.stderr
        assert "userdel" not in proc.stderr  # nothing was left behind to remove
        assert snapshot(root) == before


def failed_run_leftovers(root: Path) -> None:
    """What an install.sh that checked ids only after systemd-sysusers left on such a host."""
    conf = (SYSTEMD / "ductile.sysusers.conf").read_text()
    subprocess.run(["systemd-sysusers", f"--root={root}", "-"], input=conf, text=True, check=True, capture_output=True)
    users = entries(root, "passwd")
    assert users["ductile-default"][2:4] != ["1001", "1001"] and users["ductile-default"][3] == "1001"  # alice's group


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_recovery_from_a_failed_run_works_as_printed(alice_host: Path, tmp_path: Path) -> None:
    root = alice_host
    failed_run_leftovers(root)
    proc = install("--root", str(root), "--no-venv")
    assert proc.returncode == 1
    assert "user ductile-default exists as" in proc.stderr and "user ductile-default needs uid 1001" in proc.stderr
    # the guide shows this very output (the checkout in /root/ductile, no --root)
    doc = (REPO / "docs/deployment.md").read_text().split("<!-- install.sh output: taken id after a failed run -->\n```\n")[1]
    shown = proc.stderr.replace(f"--prefix {root} ", "").replace(f" --root {root}", "").replace(str(REPO), "/root/ductile")
    assert shown == doc.split("```")[0]
    removals = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("    groupdel") or ln.startswith("    userdel")]
    assert removals and all(f"--prefix {root} " in ln for ln in removals)
    # the operator follows the text: remove the leftovers, copy the config, pick free ids, install from it
    for line in removals:
        done = subprocess.run(shlex.split(line), capture_output=True, text=True)
        assert done.returncode == 0, (line, done.stderr)
    copy_line = next(ln.split("#")[0].strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("cp "))
    install_line = next(ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith(f"{REPO}/deploy/install.sh"))
    draft = tmp_path / "ductile.yaml"
    argv = shlex.split(copy_line.replace("/root/ductile.yaml", str(draft)))
    assert subprocess.run(argv).returncode == 0
    draft.write_text(draft.read_text().replace("uid: 1001, gid: 1001", "uid: 2001, gid: 2001")
                     .replace("uid: 1002, gid: 1002", "uid: 2002, gid: 2002"))
    argv = shlex.split(install_line.replace("/root/ductile.yaml", str(draft)))
    proc = subprocess.run(["bash", *argv, "--no-venv"], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rendered from /tmp" in proc.stdout or f"rendered from {draft}" in proc.stdout
    users, groups = entries(root, "passwd"), entries(root, "group")
    assert users["ductile-default"][2:4] == ["2001", "2001"] and groups["ductile-default"][2] == "2001"
    assert users["ductile-untrusted"][2:4] == ["2002", "2002"]
    assert users["alice"][2:4] == ["1001", "1001"] and groups["alice"][2] == "1001"
    st = os.stat(root / "var/lib/ductile/accounts/default")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (2001, 2001, 0o700)
    # the next step it prints installs the same draft as the config, and only if there is none
    assert f"test -e /etc/ductile/config.yaml || install -m 0600 -o ductile -g ductile {draft} /etc/ductile/config.yaml" \
        in proc.stdout


def release(base: Path) -> Path:
    """A checkout of its own (deploy/ and man/ under git), so a test can ship a new release."""
    src = base / "src"
    src.mkdir()
    shutil.copytree(REPO / "deploy", src / "deploy")
    shutil.copytree(REPO / "man", src / "man")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    return src


def ship(src: Path, rel: str, text: str) -> None:
    (src / rel).write_text(text)
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-qam", f"change {rel}"], check=True)


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_upgrades_replace_untouched_files_and_keep_changed_ones(tmp_path: Path) -> None:
    requires_root()
    root, src = tmp_path / "stage", release(tmp_path)
    script = src / "deploy/install.sh"
    first = install("--root", str(root), "--no-venv", script=script)
    assert first.returncode == 0, first.stderr
    manifest = (root / "opt/ductile/install-manifest").read_text()
    unit, sysusers = root / "etc/systemd/system/ductile.service", root / "etc/sysusers.d/ductile.conf"
    assert f"{hashlib.sha256(unit.read_bytes()).hexdigest()}  /etc/systemd/system/ductile.service" in manifest
    mine = sysusers.read_text() + "# my note\n"
    sysusers.write_text(mine)
    # release 2 changes both the unit (untouched here) and the sysusers file (edited here)
    new_unit = (src / "deploy/systemd/ductile.service").read_text() + "# release 2\n"
    ship(src, "deploy/systemd/ductile.service", new_unit)
    ship(src, "deploy/systemd/ductile.sysusers.conf", (src / "deploy/systemd/ductile.sysusers.conf").read_text() + "# r2\n")
    for _ in (1, 2):  # and a re-run decides the same way
        proc = install("--root", str(root), "--no-venv", script=script)
        assert proc.returncode == 0, proc.stderr
        assert "upgrade: /etc/systemd/system/ductile.service" in proc.stdout or "unchanged: /etc/systemd/system/ductile.service" in proc.stdout
        assert unit.read_text() == new_unit
        assert ("kept: /etc/sysusers.d/ductile.conf: changed since install.sh installed it, so it is yours now; "
                "the new version is /etc/sysusers.d/ductile.conf.ductile-new") in proc.stdout
        assert f"diff -u /etc/sysusers.d/ductile.conf /etc/sysusers.d/ductile.conf.ductile-new" in proc.stdout
        assert sysusers.read_text() == mine
        assert (root / "etc/sysusers.d/ductile.conf.ductile-new").read_text().endswith("# r2\n")
    # taking the new version, as the message says, makes it the installed one again
    os.replace(root / "etc/sysusers.d/ductile.conf.ductile-new", sysusers)
    proc = install("--root", str(root), "--no-venv", script=script)
    assert "unchanged: /etc/sysusers.d/ductile.conf" in proc.stdout
    assert not (root / "etc/sysusers.d/ductile.conf.ductile-new").exists()
    # a host installed before the manifest existed: a file equal to an old shipped version is upgraded
    (root / "opt/ductile/install-manifest").unlink()
    old = subprocess.run(["git", "-C", str(src), "show", "HEAD~2:deploy/systemd/ductile.service"], capture_output=True,
                         text=True, check=True).stdout
    unit.write_text(old)
    proc = install("--root", str(root), "--no-venv", script=script)
    assert "upgrade: /etc/systemd/system/ductile.service" in proc.stdout and unit.read_text() == new_unit
    # ... and one equal to no shipped version is kept
    unit.write_text(old + "# mine\n")
    (root / "opt/ductile/install-manifest").unlink()
    proc = install("--root", str(root), "--no-venv", script=script)
    assert "kept: /etc/systemd/system/ductile.service: differs from the new version and install.sh has no record" in proc.stdout
    assert unit.read_text() == old + "# mine\n"


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_replace_overwrites_what_you_changed(tmp_path: Path) -> None:
    requires_root()
    root = tmp_path / "stage"
    mine = (SYSTEMD / "ductile.tmpfiles.conf").read_text() + "# rendered from my own config\n"
    (root / "etc/tmpfiles.d").mkdir(parents=True)
    (root / "etc/tmpfiles.d/ductile.conf").write_text(mine)
    proc = install("--root", str(root), "--no-venv")
    assert proc.returncode == 0, proc.stderr
    assert "kept: /etc/tmpfiles.d/ductile.conf: differs from the new version" in proc.stdout
    assert (root / "etc/tmpfiles.d/ductile.conf").read_text() == mine
    proc = install("--root", str(root), "--no-venv", "--replace")
    assert proc.returncode == 0, proc.stderr
    assert "replace: /etc/tmpfiles.d/ductile.conf" in proc.stdout
    assert (root / "etc/tmpfiles.d/ductile.conf").read_text() == (SYSTEMD / "ductile.tmpfiles.conf").read_text()
    assert not (root / "etc/tmpfiles.d/ductile.conf.ductile-new").exists()


@pytest.fixture(scope="module")
def first_and_rerun(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A first install, then a re-run once the operator's config is in place: (root, outputs)."""
    requires_root()
    root = tmp_path_factory.mktemp("rerun") / "stage"
    first = install("--root", str(root), "--no-venv")
    assert first.returncode == 0, first.stderr
    (root / "etc/ductile/config.yaml").write_text((REPO / "deploy/config/ductile.yaml").read_text())
    rerun = install("--root", str(root), "--no-venv")
    assert rerun.returncode == 0, rerun.stderr
    return root, first.stdout, rerun.stdout


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_a_rerun_prints_upgrade_steps_never_the_first_install_ones(first_and_rerun: tuple[Path, str, str]) -> None:
    root, first, rerun = first_and_rerun
    assert "install -m 0600" in first and "vault init" in first
    assert "rendered from /etc/ductile/config.yaml" in rerun
    assert "Upgrade: your /etc/ductile/config.yaml" in rerun
    assert "install -m" not in rerun.split("Upgrade:")[1] and "vault init" not in rerun
    assert "unchanged: /etc/systemd/system/ductile-backup.service" in rerun  # rendered from the config: the same
    assert "4. backups:  systemctl enable --now ductile-backup.timer" in rerun
    assert (root / "etc/ductile/config.yaml").read_text() == (REPO / "deploy/config/ductile.yaml").read_text()


def test_the_stdlib_renderer_install_sh_uses_prints_what_deploy_render_prints(tmp_path: Path) -> None:
    """install.sh renders with ``python -m ductile.deploy`` from a bare copy of the checkout
    (only PyYAML needed), before anything is installed: it must agree with the CLI."""
    import sys

    from conftest import run_ductile

    cfg = str(REPO / "deploy/config/ductile.yaml")
    for artefact in ("sysusers", "tmpfiles", "unit", "backup-service", "backup-timer"):
        bare = subprocess.run([sys.executable, "-m", "ductile.deploy", artefact, cfg, "/etc/ductile", "ductile"],
                              capture_output=True, text=True, cwd=REPO)
        cli = run_ductile("deploy", "render", artefact, "--config", cfg, "--config-dir", "/etc/ductile")
        assert bare.returncode == cli.returncode == 0, bare.stderr + cli.stderr
        assert bare.stdout == cli.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("accounts: {default: {uid: 0, gid: 5, state_dir: /var/lib/ductile/accounts/default}}\n")
    proc = subprocess.run([sys.executable, "-m", "ductile.deploy", "unit", str(bad), "/etc/ductile", "ductile"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "accounts.default.uid" in proc.stderr
    usage = subprocess.run([sys.executable, "-m", "ductile.deploy", "nope"], capture_output=True, text=True, cwd=REPO)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def printed_commands(text: str) -> list[list[str]]:
    """The command lines of install.sh's next steps (after `name:` labels), split on && and |."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s+\d+\.\s+[a-z ]+:\s+(.*)$", line)
        if not m:
            continue
        cmd = m.group(1).split("   (")[0]
        for part in re.split(r"&&|\|\|", cmd):
            out.append(shlex.split(part))
    return out


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_every_command_install_sh_prints_exists_and_parses(first_and_rerun: tuple[Path, str, str]) -> None:
    """A next step that names a command must name one that exists, with options it accepts."""
    from conftest import run_ductile

    _, first, rerun = first_and_rerun
    commands = printed_commands(first) + printed_commands(rerun)
    assert len(commands) >= 8, first + rerun
    ductile_lines = 0
    for argv in commands:
        if argv[:3] == ["runuser", "-u", "ductile"]:
            argv = argv[4:]
        if argv[0] == "ductile":
            ductile_lines += 1
            # click rejects an unknown command or option before it honours --help
            proc = run_ductile(*argv[1:], "--help")
            assert proc.returncode == 0, (argv, proc.stderr)
        else:
            assert shutil.which(argv[0]), f"{argv[0]} is not a command here"
    assert ductile_lines >= 5


@pytest.mark.needs_tool("systemd-sysusers")
def test_rendering_works_with_a_python_that_lacks_pyyaml(tmp_path: Path) -> None:
    """The renderer needs PyYAML; with an interpreter that has none (and no venv yet), install.sh
    fetches it into its scratch directory. A dry run renders and checks ids all the same."""
    bare = Path(tempfile.mkdtemp(prefix="ductile-bare-py-", dir="/tmp"))
    try:
        os.chmod(bare, 0o755)
        subprocess.run(["/usr/bin/python3.11", "-m", "venv", str(bare / "venv")], check=True)
        py = str(bare / "venv/bin/python")
        assert subprocess.run([py, "-c", "import yaml"], capture_output=True).returncode != 0
        draft = tmp_path / "ductile.yaml"
        draft.write_text((REPO / "deploy/config/ductile.yaml").read_text().replace("1001", "61001"))
        proc = install("--root", str(tmp_path / "stage"), "--dry-run", "--no-venv", "--config", str(draft),
                       env={"PYTHON": py})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "fetching PyYAML into a scratch directory" in proc.stdout
        assert "sysusers, tmpfiles, unit and backup units rendered from" in proc.stdout and "ids checked: no conflict" in proc.stdout
        assert not (tmp_path / "stage").exists()
    finally:
        shutil.rmtree(bare)


@pytest.mark.privileged
@pytest.mark.needs_tool("systemd-sysusers")
def test_changing_an_accounts_ids_on_purpose_is_walked_through(tmp_path: Path) -> None:
    """After a good install, the operator moves `default` to other ids in the config: the rerun
    names the old user to remove and the chown its files need, and the steps work as printed."""
    requires_root()
    root = tmp_path / "stage"
    assert install("--root", str(root), "--no-venv").returncode == 0
    home = root / "var/lib/ductile/accounts/default"
    (home / "cache").write_text("the account's own data")
    os.chown(home / "cache", 1001, 1001)
    cfg = (REPO / "deploy/config/ductile.yaml").read_text().replace("uid: 1001, gid: 1001", "uid: 61001, gid: 61001")
    (root / "etc/ductile/config.yaml").write_text(cfg)
    proc = install("--root", str(root), "--no-venv")
    assert proc.returncode == 1
    assert "user ductile-default exists as 1001:1001, not 61001:61001 as written" in proc.stderr
    steps = [ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("    ")]
    assert steps[:2] == [f"groupdel --prefix {root} -f ductile-default", f"userdel --prefix {root} ductile-default"]
    assert steps[2] == (f"# after the rerun, /var/lib/ductile/accounts/default and its files still belong to the old "
                        f"ids: chown -R 61001:61001 {home}")
    for line in steps[:2]:
        assert subprocess.run(shlex.split(line), capture_output=True).returncode == 0, line
    again = install("--root", str(root), "--no-venv")
    assert again.returncode == 0, again.stderr
    assert subprocess.run(shlex.split(steps[2].split(": ", 1)[1])).returncode == 0
    assert (os.stat(home).st_uid, os.stat(home / "cache").st_uid) == (61001, 61001)
    assert entries(root, "passwd")["ductile-default"][2:4] == ["61001", "61001"]
