"""``ductile system restore`` for real: archives made by backup restored as root and as the
gateway user, owners and modes from the layout, conflicts and .bak copies, and hostile
archives (traversal, links, devices, oversize, wrong checksums, forged manifests) refused
with nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error
from systemworld import PYTHON, SysWorld, archive_members, destroy, make_sys_world
from wallworld import require_root

from ductile.system.plan import MANIFEST_NAME, UID_NAME

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def made() -> Iterator[tuple[SysWorld, Path, Path]]:
    """A world with two accounts, and an `all` archive of it made by root, a `plugins` one by the gateway."""
    require_root()
    w = make_sys_world("secret", accounts=("default", "untrusted"))
    out = w.base / "out"
    out.mkdir(mode=0o700)
    w.own(out)
    (w.plugins / "echo" / "lib").mkdir()
    (w.plugins / "echo" / "lib" / "helper.py").write_text("X = 1\n")
    os.chmod(w.plugins / "echo" / "lib" / "helper.py", 0o664)  # group-writable: restore must not keep that
    all_tgz, plugins_tgz = out / "all.tgz", out / "plugins.tgz"
    assert w.run("system", "backup", "--config", str(w.etc), "--scope", "all", "--to", str(all_tgz), root=True) \
        .returncode == 0
    proc = w.run("system", "backup", "--config", str(w.etc), "--scope", "plugins", "--to", str(plugins_tgz))
    assert proc.returncode == 0, proc.stderr
    try:
        yield w, all_tgz, plugins_tgz
    finally:
        destroy(w)


def _restore(w: SysWorld, *args: str, root: bool = True):  # type: ignore[no-untyped-def]
    return w.run("system", "restore", *args, root=root)


def _tree(top: Path) -> dict[str, tuple[int, int, int]]:
    """path below top -> (mode, uid, gid) of everything there."""
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(top))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def test_dry_run_verifies_and_prints_the_plan_and_writes_nothing(made: tuple[SysWorld, Path, Path], tmp_path: Path) -> None:
    w, all_tgz, _ = made
    stage = tmp_path / "stage"
    proc = _restore(w, str(all_tgz), "--to", str(stage), "--dry-run", "--owner", str(w.gw))
    assert proc.returncode == 0, proc.stderr
    assert "every sha256 matches" in proc.stdout and "PLAN (dry run: nothing written)" in proc.stdout
    assert f"create   {stage}{w.db}" in proc.stdout
    assert not stage.exists()


def test_root_restores_owners_and_modes_from_the_layout_not_the_archive(made: tuple[SysWorld, Path, Path],
                                                                        tmp_path: Path) -> None:
    w, all_tgz, _ = made
    stage = tmp_path / "stage"
    proc = _restore(w, str(all_tgz), "--to", str(stage), "--owner", str(w.gw), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["checks"] is None  # --to: the config names other paths; checks are not run
    tree = _tree(stage)
    rel = lambda p: str(Path(str(stage) + str(p)).relative_to(stage))  # noqa: E731
    for secret in (w.db, w.vault, w.etc / "config.yaml"):
        assert tree[rel(secret)] == (0o600, w.gw, w.gw), secret
    assert tree[rel(w.plugins / "echo" / "run")] == (0o755, 0, 0)
    assert tree[rel(w.plugins / "echo" / "lib" / "helper.py")] == (0o644, 0, 0)  # group write dropped
    for name, uid in w.accounts.items():
        assert tree[rel(w.account_dir(name))] == (0o700, uid, uid)
        assert tree[rel(w.account_dir(name) / "cache.txt")][1:] == (uid, uid)
    assert tree[rel(w.state / "accounts")][0] == 0o711  # parents of account dirs stay traversable
    assert not any(p.endswith(("age.key", "age.key.old")) or "/secret" in p for p in tree)
    assert (Path(str(stage) + str(w.plugins / "echo" / "run"))).read_bytes() == (w.plugins / "echo" / "run").read_bytes()


def test_the_gateway_user_restores_what_it_may_and_is_told_the_rest(made: tuple[SysWorld, Path, Path]) -> None:
    w, all_tgz, plugins_tgz = made
    os.chown(all_tgz, w.gw, w.gw)  # made by root; handed to the gateway user
    stage = w.base / "stage-gw"
    stage.mkdir(mode=0o700)
    w.own(stage)
    refused = _restore(w, str(all_tgz), "--to", str(stage / "a"), root=False)
    assert_one_line_error(refused, "only root", "nothing was written")
    assert not (stage / "a").exists()
    proc = _restore(w, str(plugins_tgz), "--to", str(stage / "b"), root=False)
    assert proc.returncode == 0, proc.stderr
    assert "plugin files will belong to uid" in proc.stdout
    assert {v[1] for v in _tree(stage / "b").values()} == {w.gw}


def test_existing_files_are_kept_unless_force_and_then_kept_as_bak(made: tuple[SysWorld, Path, Path],
                                                                     tmp_path: Path) -> None:
    w, _, plugins_tgz = made
    stage = tmp_path / "stage"
    assert _restore(w, str(plugins_tgz), "--to", str(stage)).returncode == 0
    config = Path(str(stage) + str(w.etc / "config.yaml"))
    db = Path(str(stage) + str(w.db))
    config.write_text("# edited after the backup\n")
    Path(str(db) + "-wal").write_bytes(b"a log that belongs to the old database")
    again = _restore(w, str(plugins_tgz), "--to", str(stage))
    line = assert_one_line_error(again, "write-ahead log", "and 1 more", "--force")
    assert config.read_text() == "# edited after the backup\n"
    dry = _restore(w, str(plugins_tgz), "--to", str(stage), "--dry-run")
    assert dry.returncode == 1 and f"{config}: exists with other contents" in dry.stdout
    forced = _restore(w, str(plugins_tgz), "--to", str(stage), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    kept = {k["path"]: k["bak"] for k in json.loads(forced.stdout)["kept"]}
    assert Path(kept[str(config)]).read_text() == "# edited after the backup\n"
    assert config.read_bytes() == (w.etc / "config.yaml").read_bytes()
    assert not Path(str(db) + "-wal").exists()  # the old log went with the old database
    assert Path(kept[str(db)] + "-wal").read_bytes() == b"a log that belongs to the old database"


def test_a_symlink_on_the_way_is_refused_not_followed(made: tuple[SysWorld, Path, Path], tmp_path: Path) -> None:
    w, _, plugins_tgz = made
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stage = tmp_path / "stage"
    (stage / w.base.relative_to("/")).mkdir(parents=True)
    os.symlink(elsewhere, stage / w.base.relative_to("/") / "etc")
    proc = _restore(w, str(plugins_tgz), "--to", str(stage))
    assert_one_line_error(proc, "symlink", "never follows links")
    assert list(elsewhere.iterdir()) == []


# -- hostile archives ------------------------------------------------------------------------

def _rebuild(src: Path, dst: Path, *, members: Callable[[list[tuple[tarfile.TarInfo, bytes]]], None] | None = None,
             manifest: Callable[[dict], None] | None = None) -> Path:  # type: ignore[type-arg]
    """A copy of ``src`` with its members and/or manifest changed (the manifest rewritten
    after ``members`` ran, so a forged archive can be made self-consistent)."""
    rows: list[tuple[tarfile.TarInfo, bytes]] = []
    with tarfile.open(src, "r:gz") as tar:
        for info in tar.getmembers():
            rows.append((info, tar.extractfile(info).read() if info.isfile() else b""))  # type: ignore[union-attr]
    if members:
        members(rows)
    if manifest:
        doc = yaml.safe_load(rows[0][1])
        manifest(doc)
        data = yaml.safe_dump(doc, sort_keys=False).encode()
        rows[0][0].size = len(data)
        rows[0] = (rows[0][0], data)
    with tarfile.open(dst, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in rows:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return dst


def _entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data


def _listed(doc: dict, name: str, data: bytes, source: str, role: str = "config") -> None:  # type: ignore[type-arg]
    doc["members"].append({"path": name, "source": source, "role": role, "type": "file", "mode": "0644",
                           "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def _run_member(rows: list[tuple[tarfile.TarInfo, bytes]]) -> int:
    return next(i for i, (info, _) in enumerate(rows) if info.name.endswith("echo/run"))


HOSTILE = {
    "traversal in the manifest": (None, lambda d: d["members"][3].update(path="config/../../../tmp/evil"), "'..'"),
    "an absolute member": (lambda r: r.append(_entry("/tmp/ductile-evil", b"x")), None, "does not list"),
    "a member the manifest omits": (lambda r: r.append(_entry("plugins/plugins/echo/extra", b"x")), None,
                                    "does not list"),
    "a symlink": (lambda r: r.__setitem__(_run_member(r), _entry(r[_run_member(r)][0].name, kind=tarfile.SYMTYPE,
                                                                 link="/etc/shadow")), None, "symbolic link"),
    "a hard link": (lambda r: r.__setitem__(_run_member(r), _entry(r[_run_member(r)][0].name, kind=tarfile.LNKTYPE,
                                                                   link="etc/passwd")), None, "hard link"),
    "a device": (lambda r: r.append(_entry("plugins/plugins/echo/dev", kind=tarfile.CHRTYPE)), None,
                 "character device"),
    "a FIFO": (lambda r: r.append(_entry("plugins/plugins/echo/fifo", kind=tarfile.FIFOTYPE)), None, "FIFO"),
    "a wrong checksum": (lambda r: r.__setitem__(_run_member(r), (r[_run_member(r)][0],
                                                                  b"#!/bin/sh\nrm -rf /\n".ljust(len(r[_run_member(r)][1]),
                                                                                              b"#"))),
                         None, "sha256 does not match"),
    "a missing member": (lambda r: r.pop(_run_member(r)), None, "not in the archive"),
    "a config file outside the config dir": (
        lambda r: r.append(_entry("config/cron", b"* * * * * root sh\n")),
        lambda d: _listed(d, "config/cron", b"* * * * * root sh\n", "/tmp/ductile-evil/cron"),
        "not that name inside source_config_dir"),
    "a forged outside include": (
        lambda r: r.append(_entry("config/_outside/9/cron", b"* * * * * root sh\n")),
        lambda d: _listed(d, "config/_outside/9/cron", b"* * * * * root sh\n", "/tmp/ductile-forged/cron"), None),
    "a tree member outside its tree": (None, lambda d: d["members"][-1].update(source="/tmp/ductile-evil/x"),
                                       "not inside the tree"),
    "a member over the age key": (None, lambda d: d.update(source_age_key_file=d["members"][1]["source"]),
                                  "age key"),
    "not a backup": (lambda r: r.pop(0), None, "does not start with BACKUP_MANIFEST.txt"),
    "a pairing code that does not match": (lambda r: r.__setitem__(1, _entry(UID_NAME, b"ZZZZZ\n")), None,
                                           "pairing code"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_with_nothing_written(made: tuple[SysWorld, Path, Path], tmp_path: Path,
                                                           case: str) -> None:
    w, _, plugins_tgz = made
    members, manifest, needle = HOSTILE[case]
    evil = _rebuild(plugins_tgz, tmp_path / "evil.tgz", members=members, manifest=manifest)
    stage = tmp_path / "stage"
    if needle is None:  # a self-consistent forgery of an outside include: its destination is shown before anything
        dry = _restore(w, str(evil), "--to", str(stage), "--dry-run")
        assert dry.returncode == 0 and f"create   {stage}/tmp/ductile-forged/cron" in dry.stdout
        assert not stage.exists() and not Path("/tmp/ductile-forged").exists()
        return
    proc = _restore(w, str(evil), "--to", str(stage))
    assert_one_line_error(proc, needle, "fix:")
    assert not stage.exists()
    assert not Path("/tmp/ductile-evil").exists()


def test_an_archive_over_the_size_limit_is_refused(made: tuple[SysWorld, Path, Path], tmp_path: Path) -> None:
    w, _, plugins_tgz = made
    proc = _restore(w, str(plugins_tgz), "--to", str(tmp_path / "stage"), "--max-size", "1KiB")
    assert_one_line_error(proc, "over the limit", "--max-size")
    assert not (tmp_path / "stage").exists()


def test_a_pax_header_bomb_is_refused_before_it_is_read(made: tuple[SysWorld, Path, Path], tmp_path: Path) -> None:
    w, _, plugins_tgz = made

    def bomb(rows: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        info = rows[_run_member(rows)][0]
        info.pax_headers = {"comment": "A" * (8 * 1024 * 1024)}

    evil = _rebuild(plugins_tgz, tmp_path / "bomb.tgz", members=bomb)
    assert_one_line_error(_restore(w, str(evil), "--to", str(tmp_path / "stage")), "pax header of")
    assert not (tmp_path / "stage").exists()


def test_in_place_refusal_leaves_the_live_files_alone(made: tuple[SysWorld, Path, Path], tmp_path: Path) -> None:
    w, _, plugins_tgz = made
    before = {p: p.read_bytes() for p in (w.db, w.vault, w.etc / "config.yaml")}
    listing = sorted(os.listdir(w.state)) + sorted(os.listdir(w.etc))
    evil = _rebuild(plugins_tgz, tmp_path / "evil.tgz", members=HOSTILE["a wrong checksum"][0])
    assert_one_line_error(_restore(w, str(evil), "--force"), "sha256 does not match")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(os.listdir(w.state)) + sorted(os.listdir(w.etc)) == listing


def test_every_member_of_a_real_archive_is_a_file_or_directory(made: tuple[SysWorld, Path, Path]) -> None:
    _, all_tgz, _ = made
    members = archive_members(all_tgz)  # asserts the kinds
    assert MANIFEST_NAME in members and UID_NAME in members


def test_someone_who_may_not_write_there_gets_one_line_and_nothing_changes(made: tuple[SysWorld, Path, Path]) -> None:
    w, _, plugins_tgz = made
    stranger = next(iter(w.accounts.values()))
    place = Path(tempfile.mkdtemp(prefix="ductile-restore-", dir="/tmp"))
    try:
        os.chmod(place, 0o755)
        readable = place / "copy.tgz"
        readable.write_bytes(plugins_tgz.read_bytes())
        os.chmod(readable, 0o644)
        target = place / "root-only"
        target.mkdir(mode=0o755)
        proc = subprocess.run(["setpriv", f"--reuid={stranger}", f"--regid={stranger}", "--clear-groups", "--",
                               PYTHON, "-m", "ductile", "system", "restore", str(readable), "--to", str(target)],
                              capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
        assert_one_line_error(proc, "Permission denied", "nothing was replaced", "root or as the gateway user")
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(place)
