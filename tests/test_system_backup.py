"""``ductile system backup`` for real: the CLI run as the gateway user (a private uid with no
capabilities) or root, real keys and vaults, real archives read back, a full tmpfs, files
that turn unreadable or change, SIGTERM in the middle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_in_pty
from systemworld import KEY_MATERIAL, PYTHON, SysWorld, archive_members, destroy, make_sys_world, manifest_of, \
    plant_hazards
from wallworld import require_root

from ductile.system.plan import MANIFEST_NAME, UID_NAME

pytestmark = pytest.mark.privileged
SCOPES = ("db", "config", "plugins", "all")


@pytest.fixture(scope="module", params=["secret", "config", "plugin"])
def world(request: pytest.FixtureRequest) -> Iterator[tuple[SysWorld, dict[str, str]]]:
    """The key in secret/, in the config dir, inside a plugin root; two accounts; every hazard."""
    require_root()
    w = make_sys_world(request.param, accounts=("default", "untrusted"))
    try:
        yield w, plant_hazards(w)
    finally:
        destroy(w)


def _backup(w: SysWorld, scope: str, name: str, *, root: bool = False) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = w.base / "out"
    if not out.exists():
        out.mkdir(mode=0o700)
        w.own(out)
    dest = out / name
    proc = w.run("system", "backup", "--config", str(w.etc), "--scope", scope, "--to", str(dest), "--json", root=root)
    assert proc.returncode == 0, proc.stderr
    return dest, json.loads(proc.stdout)


@pytest.mark.parametrize("scope", SCOPES)
def test_no_scope_ever_holds_secret_zero(world: tuple[SysWorld, dict[str, str]], scope: str) -> None:
    w, hazards = world
    dest, printed = _backup(w, scope, f"{scope}.tar.gz", root=(scope == "all"))  # all: root reads the accounts' dirs
    members = archive_members(dest)
    manifest = manifest_of(dest)
    assert printed["members"] == manifest["members"] and printed["archive"] == str(dest)
    # the archive holds exactly what the manifest lists
    assert set(members) == {m["path"] for m in manifest["members"]} | {MANIFEST_NAME, UID_NAME}
    key, old = w.key.read_bytes(), Path(str(w.key) + ".old").read_bytes()
    for name, data in members.items():
        assert "secret" not in name.split("/"), name
        assert not name.endswith(("age.key", "age.key.old")), name
        if data is not None:
            assert data not in (key, old), f"{name} is the key"
            assert not KEY_MATERIAL.search(data), f"{name} holds key material"
    sources = {m["source"] for m in manifest["members"]}
    assert not sources & set(hazards) and str(w.key) not in sources
    excluded = {item for group in manifest["excluded"] for item in group["items"]}
    assert str(w.key) in excluded and str(w.key) + ".old" in excluded
    if scope in ("plugins", "all"):
        assert {h for h in hazards if h.startswith(str(w.plugins))} <= excluded
        assert any(m["path"].endswith("echo/run") for m in manifest["members"])
    if scope == "all":
        assert {h for h in hazards if "/accounts/" in h} <= excluded
        assert any(m["path"] == "accounts/default/cache.txt" for m in manifest["members"])
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    roles = {m["role"] for m in manifest["members"]}
    assert roles >= {"db"} and (("vault" in roles) == (scope != "db"))


def test_the_gateway_user_backs_up_everything_it_can_read_and_says_what_it_cannot(
        world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    dest, manifest = _backup(w, "all", "all-as-gateway.tar.gz")
    reasons = {item: group["reason"] for group in manifest["excluded"] for item in group["items"]}
    for name in w.accounts:
        assert "readable only by root" in reasons[str(w.account_dir(name))]
    assert not any(m["role"] == "account" for m in manifest["members"])
    assert dest.stat().st_uid == w.gw and manifest["created_by"]["uid"] == w.gw
    assert len(manifest["backup_uid"]) == 5 and (archive_members(dest)[UID_NAME] or b"").startswith(
        manifest["backup_uid"].encode())


def test_vault_commands_print_the_pairing_code_the_archives_carry(world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    _, manifest = _backup(w, "db", "pairing.tar.gz")
    code = manifest["backup_uid"]
    assert f"pairing code {code}:" in w.said["rotate-key"]      # the key in use now
    assert f"pairing code {code}:" not in w.said["init"]        # the key before the rotation had another
    assert "pairing code " in w.said["init"]


def test_the_plan_is_printed_before_the_archive_is_written(world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    dest = w.base / "out" / "plan.tar.gz"
    w.base.joinpath("out").mkdir(exist_ok=True, mode=0o700)
    w.own(w.base / "out")
    proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "plugins", "--to", str(dest))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("INCLUDED") < out.index("EXCLUDED") < out.index("wrote ")
    assert f"{w.key}: secrets.age_key_file" in out and "holds an age secret key" in out
    assert "pairing code" in out


def test_never_over_an_existing_file(world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    dest, _ = _backup(w, "db", "taken.tar.gz")
    before = dest.read_bytes()
    proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "db", "--to", str(dest))
    assert_one_line_error(proc, str(dest), "already exists", "fix:")
    assert dest.read_bytes() == before


def test_a_new_directory_is_made_0700_and_keep_prunes_only_our_own(world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    scratch = w.base / "scratch"
    scratch.mkdir(mode=0o700)
    w.own(scratch)
    target = scratch / "backups" / "nested"
    made = []
    for _ in range(3):
        proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "db", "--to", f"{target}/",
                     "--keep", "2", "--json")
        assert proc.returncode == 0, proc.stderr
        made.append(json.loads(proc.stdout)["archive"])
    (target / "notes.txt").write_text("mine")
    assert oct(target.stat().st_mode & 0o777) == "0o700" and oct((scratch / "backups").stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in target.iterdir()) == sorted([Path(made[1]).name, Path(made[2]).name, "notes.txt"])
    assert all(Path(m).name.startswith("ductile-db-") for m in made)


def test_someone_else_is_told_to_run_it_as_the_gateway_user(world: tuple[SysWorld, dict[str, str]]) -> None:
    w, _ = world
    stranger = next(iter(w.accounts.values()))
    proc = subprocess.run(["setpriv", f"--reuid={stranger}", f"--regid={stranger}", "--clear-groups", "--",
                           PYTHON, "-m", "ductile", "system", "backup", "--config", str(w.etc), "--to", "/tmp/x.tgz"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}, cwd="/")
    # the stranger cannot even read the config (0700, the gateway's): one line, no traceback
    assert_one_line_error(proc)
    assert not Path("/tmp/x.tgz").exists()


def test_an_unreadable_file_refuses_the_backup_before_anything_is_written(tmp_path: Path) -> None:
    require_root()
    w = make_sys_world("secret")
    try:
        blocked = w.plugins / "echo" / "vendored.py"
        blocked.write_text("root only")
        os.chmod(blocked, 0o600)  # root-owned: the gateway user cannot read it
        out = w.base / "out"
        out.mkdir(mode=0o700)
        w.own(out)
        proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "plugins", "--to", str(out / "a.tgz"))
        assert_one_line_error(proc, str(blocked), "cannot read it", "fix:")
        assert list(out.iterdir()) == []
    finally:
        destroy(w)


# -- failures in the middle leave nothing behind (the library, driven at the exact moment) ---

def _library_world() -> SysWorld:
    require_root()
    return make_sys_world("secret")


def _load(w: SysWorld):  # type: ignore[no-untyped-def]
    from ductile.config import load_config

    return load_config(str(w.etc))


@pytest.mark.parametrize("swap", ["fifo", "replaced", "grew", "key"])
def test_a_file_that_changes_after_the_plan_aborts_and_leaves_nothing(tmp_path: Path, swap: str) -> None:
    from ductile.system.backup import run_backup
    from ductile.system.gather import BackupError

    w = _library_world()
    try:
        victim = w.plugins / "echo" / "run"
        key_line = next(ln for ln in w.key.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1"))

        def on_plan(plan, dest) -> None:  # type: ignore[no-untyped-def]
            if swap == "fifo":
                victim.unlink()
                os.mkfifo(victim)
            elif swap == "replaced":  # same bytes, another file (the original kept, so its inode stays taken)
                data = victim.read_bytes()
                victim.rename(victim.parent / "run.orig")
                victim.write_bytes(data)
            elif swap == "grew":
                with open(victim, "ab") as fh:
                    fh.write(b"# more\n")
            else:  # key material appears in a file that had none when it was planned (same size)
                size = victim.stat().st_size
                victim.write_text(("#" + key_line + "\n").ljust(size, "#")[:size])

        out = tmp_path / "out"
        with pytest.raises(BackupError) as err:
            run_backup(_load(w), "plugins", str(out / "a.tgz"), on_plan=on_plan)
        line = err.value.one_line()
        assert str(victim) in line and "no archive was left behind" in line
        assert ("key material" in line) is (swap == "key")
        assert list(out.iterdir()) == []  # no archive, no .partial, no work directory
    finally:
        destroy(w)


def test_a_file_that_turns_unreadable_mid_backup_leaves_nothing() -> None:
    """The gateway user (a forked child that dropped to its uid) plans a file it can read;
    before the write it loses the permission. The write fails with EACCES, nothing remains."""
    from ductile.system.backup import run_backup
    from ductile.system.gather import BackupError

    w = _library_world()
    try:
        victim = w.plugins / "echo" / "helper.py"
        victim.write_text("X = 1\n")
        w.own(victim)
        os.chmod(victim, 0o600)
        out = w.base / "out"
        out.mkdir(mode=0o700)
        w.own(out)
        loaded = _load(w)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the gateway user, no capabilities
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(w.gw)
                os.setuid(w.gw)

                def on_plan(plan, dest) -> None:  # type: ignore[no-untyped-def]
                    os.chmod(victim, 0)

                try:
                    run_backup(loaded, "plugins", str(out / "a.tgz"), on_plan=on_plan)
                    result = "no error"
                except BackupError as err:
                    result = err.one_line()
                os.write(write_end, result.encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as fh:
            result = fh.read()
        os.waitpid(pid, 0)
        assert str(victim) in result and "Permission denied" in result and "no archive was left behind" in result
        assert list(out.iterdir()) == []
    finally:
        destroy(w)


def test_ctrl_c_during_the_write_leaves_nothing(tmp_path: Path) -> None:
    from ductile.system.backup import run_backup

    w = _library_world()
    try:
        def progress(done: int, member: str) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_backup(_load(w), "plugins", str(tmp_path / "a.tgz"), progress=progress)
        assert list(tmp_path.iterdir()) == []
    finally:
        destroy(w)


def test_sigterm_during_the_write_leaves_nothing() -> None:
    """systemd stopping the backup unit: the process unwinds and removes its partial file."""
    w = _library_world()
    try:
        big = w.plugins / "echo" / "model.bin"
        with open(big, "wb") as fh:
            for _ in range(96):
                fh.write(os.urandom(1 << 20))  # incompressible: gzip needs seconds for it
        out = w.base / "out"
        out.mkdir(mode=0o700)
        proc = subprocess.Popen([PYTHON, "-m", "ductile", "system", "backup", "--config", str(w.etc), "--scope",
                                 "plugins", "--to", str(out / "a.tgz")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".partial") for p in out.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "Traceback" not in err, err
        assert list(out.iterdir()) == [], (proc.returncode, err)
    finally:
        destroy(w)


@pytest.mark.parametrize("where", ["snapshot", "archive"])
def test_a_full_disk_leaves_no_partial_archive(where: str) -> None:
    """A real tmpfs too small for the snapshot (the database) or for the archive (a big
    incompressible plugin file), mounted for this test and always unmounted."""
    w = _library_world()
    mnt = w.base / "full"
    mnt.mkdir()
    size = "48k" if where == "snapshot" else "512k"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        os.chown(mnt, w.gw, w.gw)
        if where == "archive":
            (w.plugins / "echo" / "blob.bin").write_bytes(os.urandom(2 << 20))
        proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "plugins", "--to", str(mnt / "a.tgz"))
        assert_one_line_error(proc, "no space left", "fix:", "df -h")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        destroy(w)


def test_what_a_hostile_account_leaves_in_its_directory_cannot_fail_the_backup() -> None:
    """A plugin controls its state_dir: a tree too deep, a FIFO, a link to the key. Root's
    `all` backup leaves each out with the reason and archives the rest."""
    w = _library_world_with_account()
    try:
        home = w.account_dir("default")
        uid = w.accounts["default"]
        deep = home / "/".join(["d"] * 70)
        subprocess.run(["mkdir", "-p", str(deep)], check=True, user=uid, group=uid, extra_groups=[], cwd="/")
        subprocess.run(["mkfifo", str(home / "pipe")], check=True, user=uid, group=uid, extra_groups=[], cwd="/")
        subprocess.run(["ln", "-s", str(w.key), str(home / "key")], check=True, user=uid, group=uid, extra_groups=[],
                       cwd="/")
        dest = w.base / "all.tgz"
        proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "all", "--to", str(dest), "--json",
                     root=True)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads(proc.stdout)
        reasons = {item: g["reason"] for g in manifest["excluded"] for item in g["items"]}
        assert "FIFO" in reasons[str(home / "pipe")] and "symlink" in reasons[str(home / "key")]
        assert any("deeper than 64" in r for p, r in reasons.items() if p.startswith(str(home / "d")))
        assert "accounts/default/cache.txt" in {m["path"] for m in manifest["members"]}
    finally:
        destroy(w)


def _library_world_with_account() -> SysWorld:
    require_root()
    return make_sys_world("secret", accounts=("default",))


def test_a_progress_bar_on_a_terminal_and_none_in_a_pipe() -> None:
    w = _library_world()
    try:
        (w.plugins / "echo" / "weights.bin").write_bytes(os.urandom(12 << 20))
        args = ["system", "backup", "--config", str(w.etc), "--scope", "plugins"]
        code, out = run_in_pty([PYTHON, "-m", "ductile", *args, "--to", str(w.base / "tty.tgz")],
                               env={"NO_COLOR": "1", "TERM": "xterm"})
        assert code == 0, out
        assert b"archiving" in out and b"MB" in out
        piped = w.run(*args, "--to", str(w.base / "pipe.tgz"), root=True)
        assert piped.returncode == 0 and "archiving" not in piped.stdout + piped.stderr
    finally:
        destroy(w)
