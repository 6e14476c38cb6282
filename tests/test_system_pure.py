"""The pure rules of ``ductile system``: scopes, exclusions, secret zero, the manifest's
checks, restore's owners and conflicts, retention, the strict tar reader, /proc/locks."""

from __future__ import annotations

import gzip
import io
import tarfile
from datetime import datetime, timezone

import pytest

from ductile.state.instance import parse_proc_locks, pick_holder
from ductile.system.backup import archive_name, to_prune
from ductile.system.manifest import (
    Limits,
    RestoreRefused,
    arcname_problem,
    build_manifest,
    destination_problem,
    parse_manifest,
    render_manifest,
)
from ductile.system.plan import Entry, Paths, junk_reason, plan_backup, scope_has, sources_for
from ductile.system.restore import DestFact, plan_restore
from ductile.system.secretzero import (
    KEY_MATERIAL,
    KeyFile,
    MaterialScanner,
    SecretZero,
    has_key_material,
    pairing_code,
    secret_place,
)
from ductile.system.tarread import StrictTarReader

KEY_LINE = b"AGE-SECRET-KEY-1" + b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L" + b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA"[:26]
PATHS = Paths(config_file="/etc/d/config.yaml", config_dir="/etc/d",
              config_files=("/etc/d/config.yaml", "/etc/d/conf.d/a.yaml", "/srv/extra.yaml"),
              lock_file="/etc/d/.checksums", state_path="/var/lib/d/d.db", vault_file="/var/lib/d/vault.age",
              age_key_file="/etc/d/secret/age.key", plugin_roots=("/opt/p", "/srv/p"),
              accounts=(("default", 1001, 1001, "/var/lib/d/accounts/default"),))
ZERO = SecretZero((KeyFile("/etc/d/secret/age.key", "secrets.age_key_file", frozenset({(1, 42)}), "k" * 64),),
                  "K7P2Q")


def test_key_line_fixture_is_a_key() -> None:
    assert len(KEY_LINE) == 74 and KEY_MATERIAL.fullmatch(KEY_LINE)


@pytest.mark.parametrize("scope,parts", [
    ("db", {"db"}), ("config", {"db", "config"}), ("plugins", {"db", "config", "plugins"}),
    ("all", {"db", "config", "plugins", "all"}),
])
def test_scopes_nest(scope: str, parts: set[str]) -> None:
    assert {p for p in ("db", "config", "plugins", "all") if scope_has(scope, p)} == parts


def test_sources_per_scope_and_archive_names() -> None:
    roles = lambda scope: [(s.role, s.arcroot) for s in sources_for(scope, PATHS)]  # noqa: E731
    assert roles("db") == [("db", "db/d.db")]
    assert roles("config") == [("db", "db/d.db"), ("config", "config/config.yaml"), ("config", "config/conf.d/a.yaml"),
                               ("config", "config/_outside/1/extra.yaml"), ("lock", "config/.checksums"),
                               ("vault", "vault/vault.age")]
    assert roles("plugins")[-2:] == [("plugin", "plugins/p"), ("plugin", "plugins/p-2")]  # two roots named p
    assert roles("all")[-1] == ("account", "accounts/default")
    assert [s for s in sources_for("all", PATHS) if s.role == "account"][0].owner == (1001, 1001)


@pytest.mark.parametrize("name,is_dir,why", [
    (".git", True, "version control"), ("node_modules", True, "installed node packages (recreate them)"),
    ("venv", True, "a virtualenv (recreate it)"), ("__pycache__", True, "bytecode cache"),
    ("x.pyc", False, "bytecode cache"), (".DS_Store", False, "Finder metadata"),
    ("git", True, None), ("run.py", False, None), (".git", False, None),
])
def test_junk(name: str, is_dir: bool, why: str | None) -> None:
    assert junk_reason(name, is_dir) == why


@pytest.mark.parametrize("path,inside", [
    ("/etc/d/secret", True), ("/etc/d/secret/age.key", True), ("/opt/p/echo/secret/x", True),
    ("/etc/d/secrets/x", False), ("/etc/d/my-secret", False), ("/etc/d/secret.txt", False),
])
def test_secret_place(path: str, inside: bool) -> None:
    assert secret_place(path) is inside


@pytest.mark.parametrize("identity,sha,material,expected", [
    ((1, 42), None, False, "this is secrets.age_key_file"),
    ((9, 9), "k" * 64, False, "a copy of secrets.age_key_file"),
    ((9, 9), "z" * 64, True, "holds an age secret key"),
    ((9, 9), "z" * 64, False, None),
])
def test_secret_zero_by_identity_content_and_material(identity: tuple[int, int], sha: str, material: bool,
                                                      expected: str | None) -> None:
    reason = ZERO.reason(identity=identity, sha256=sha, material=material)
    assert (reason is None) if expected is None else (expected in (reason or ""))


@pytest.mark.parametrize("data,found", [
    (KEY_LINE, True), (KEY_LINE.lower(), True), (b"# note\n" + KEY_LINE + b"\n", True),
    (KEY_LINE[:-1], False), (b"AGE-SECRET-KEY-1...", False), (b"AGE-SECRET-KEY-1" + b"B" * 58, False),  # B is not bech32
])
def test_key_material(data: bytes, found: bool) -> None:
    assert has_key_material(data) is found


@pytest.mark.parametrize("cut", range(0, 80, 7))
def test_scanner_finds_a_key_split_across_chunks(cut: int) -> None:
    data = b"x" * 40 + KEY_LINE + b"y" * 40
    scan = MaterialScanner()
    for i in range(0, len(data), max(cut, 1)):
        scan.feed(data[i:i + max(cut, 1)])
    assert scan.found


def test_pairing_code_is_stable_short_and_unambiguous() -> None:
    a = pairing_code("age1abc")
    assert a == pairing_code("age1abc") and a != pairing_code("age1abd")
    assert len(a) == 5 and not set(a) & set("IL0O1")


def _plan(scope: str, facts: dict[str, list[Entry]], euid: int = 984):  # type: ignore[no-untyped-def]
    return plan_backup(scope, PATHS, facts, ZERO, euid=euid)


def test_plan_excludes_each_hazard_with_its_reason_and_keeps_the_rest() -> None:
    facts = {
        "db/d.db": [Entry("", "file", 100, 0o100600, (1, 1))],
        "plugins/p": [
            Entry("", "dir", mode=0o40755, identity=(1, 2)),
            Entry("echo", "dir", mode=0o40755, identity=(1, 3)),
            Entry("echo/run", "file", 10, 0o100755, (1, 4), sha256="a" * 64),
            Entry("echo/key", "file", 74, 0o100600, (1, 42), sha256="k" * 64),
            Entry("echo/copy", "file", 74, 0o100600, (1, 5), sha256="k" * 64),
            Entry("echo/notes", "file", 90, 0o100644, (1, 6), sha256="b" * 64, material=True),
            Entry("echo/link", "symlink", identity=(1, 7)),
            Entry("echo/fifo", "fifo", identity=(1, 8)),
            Entry("echo/secret", "dir", mode=0o40700, identity=(1, 9)),
            Entry("echo/.git", "pruned", mode=0o40755, identity=(1, 10)),
            Entry("echo/x.pyc", "file", 5, 0o100644, (1, 11)),
            Entry("echo/bad\udcff", "badname"),
        ],
        "plugins/p-2": [Entry("", "missing")],
    }
    plan = _plan("plugins", facts)
    assert plan.ok, plan.problems
    assert [m.arcname for m in plan.members] == ["db/d.db", "plugins/p", "plugins/p/echo", "plugins/p/echo/run"]
    reasons = dict(plan.excluded)
    assert "this is secrets.age_key_file" in reasons["/opt/p/echo/key"]
    assert "a copy of secrets.age_key_file" in reasons["/opt/p/echo/copy"]
    assert "holds an age secret key" in reasons["/opt/p/echo/notes"]
    assert "symlink" in reasons["/opt/p/echo/link"] and "FIFO" in reasons["/opt/p/echo/fifo"]
    assert "secret/" in reasons["/opt/p/echo/secret"] and reasons["/opt/p/echo/.git"] == "version control"
    assert reasons["/opt/p/echo/x.pyc"] == "bytecode cache" and "UTF-8" in reasons["/opt/p/echo/bad\udcff"]
    assert "never archived" in reasons["/etc/d/secret/age.key"]
    assert "never archived as such" in reasons["/var/lib/d/d.db-wal"]
    assert any("/srv/p does not exist" in w for w in plan.warnings)


def test_plan_refuses_an_unreadable_file_and_a_missing_database() -> None:
    plan = _plan("plugins", {"db/d.db": [Entry("", "missing")],
                             "plugins/p": [Entry("", "dir"), Entry("run", "unreadable", error="Permission denied")]})
    assert not plan.ok
    assert [p.path for p in plan.problems] == ["/var/lib/d/d.db", "/opt/p/run"]


@pytest.mark.parametrize("euid,excluded", [(984, True), (0, False)])
def test_unreadable_account_dirs_are_excluded_for_the_gateway_and_a_problem_for_root(euid: int, excluded: bool) -> None:
    facts = {"db/d.db": [Entry("", "file", 1)], "accounts/default": [Entry("", "unreadable", error="Permission denied")]}
    plan = _plan("all", facts, euid)
    assert ("/var/lib/d/accounts/default" in dict(plan.excluded)) is excluded
    assert plan.ok is excluded


def test_nothing_an_account_puts_in_its_directory_can_fail_the_backup() -> None:
    facts = {"db/d.db": [Entry("", "file", 1)],
             "accounts/default": [Entry("", "dir"), Entry("deep/x", "unreadable", error="nested deeper than 64"),
                                  Entry("ok.txt", "file", 1, 0o100600, (3, 3), sha256="e" * 64)]}
    plan = _plan("all", facts, 0)
    assert plan.ok and "accounts/default/ok.txt" in [m.arcname for m in plan.members]
    assert "the account's own file, left out" in dict(plan.excluded)["/var/lib/d/accounts/default/deep/x"]
    assert any("left out" in w for w in plan.warnings)


def test_warnings_name_the_vault_and_its_pairing_code() -> None:
    facts = {"db/d.db": [Entry("", "file", 1)], "vault/vault.age": [Entry("", "file", 9, 0o100600, (2, 2), sha256="c" * 64)]}
    plan = _plan("config", facts)
    assert any("contains the vault" in w and "K7P2Q" in w for w in plan.warnings)


def _manifest_doc() -> dict:  # type: ignore[type-arg]
    facts = {"db/d.db": [Entry("", "file", 3, 0o100600, (1, 1))],
             "config/config.yaml": [Entry("", "file", 2, 0o100600, (1, 2), sha256="c" * 64)],
             "plugins/p": [Entry("", "dir", mode=0o40755), Entry("run", "file", 4, 0o100755, (1, 3), sha256="a" * 64)],
             "accounts/default": [Entry("", "dir", mode=0o40700), Entry("f", "file", 1, 0o100600, (1, 4), sha256="b" * 64)]}
    plan = plan_backup("all", PATHS, facts, ZERO, euid=0).with_db("d" * 64, 3)
    return build_manifest(plan, PATHS, version="1", hostname="h", created_at="t", uid=0, user="root")


def test_a_manifest_backup_writes_is_one_restore_accepts() -> None:
    m = parse_manifest(render_manifest(_manifest_doc()))
    assert m.scope == "all" and m.backup_uid == "K7P2Q" and len(m.members) == 6
    assert {r.role for r in m.roots} == {"plugin", "account"}


def _tamper(mutate) -> bytes:  # type: ignore[no-untyped-def]
    doc = _manifest_doc()
    mutate(doc)
    return render_manifest(doc)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["members"][2].update(path="plugins/../../etc/cron.d/x"), "'..'"),
    (lambda d: d["members"][2].update(path="/etc/passwd"), "absolute"),
    (lambda d: d["members"][3].update(source="/etc/cron.d/evil"), "not inside the tree"),
    (lambda d: d["members"][3].update(source="/opt/p/../etc/x"), "normalised"),
    (lambda d: d["members"][1].update(source=PATHS.age_key_file), "secret/"),
    (lambda d: d.update(source_age_key_file="/etc/d/config.yaml"), "over the age key"),
    (lambda d: d["members"][3].update(type="symlink"), "regular files and directories only"),
    (lambda d: d["members"][0].update(type="dir"), "not allowed"),
    (lambda d: d["members"][3].update(size=-1), "byte count"),
    (lambda d: d["members"][3].update(sha256="nope"), "sha256"),
    (lambda d: d["members"].append(dict(d["members"][3])), "share"),
    (lambda d: d["members"][0].update(source="/tmp/other.db"), "source_db_path"),
    (lambda d: d.update(source_db_sha256="e" * 64), "source_db_sha256"),
    (lambda d: d["accounts"][0].update(uid=0), "never root"),
    (lambda d: d.update(format=2), "format"),
    (lambda d: d.update(kind="other"), "not a ductile backup manifest"),
    (lambda d: d.update(backup_uid="0OIL1"), "pairing code"),
])
def test_manifest_refusals(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RestoreRefused) as err:
        parse_manifest(_tamper(mutate))
    line = err.value.one_line()
    assert needle in line and "\n" not in line


def test_manifest_bounds() -> None:
    data = render_manifest(_manifest_doc())
    with pytest.raises(RestoreRefused, match="entries"):
        parse_manifest(data, Limits(max_entries=5))
    with pytest.raises(RestoreRefused, match="over the limit"):
        parse_manifest(data, Limits(max_bytes=9))
    with pytest.raises(RestoreRefused, match="larger than"):
        parse_manifest(data, Limits(max_manifest=100))


@pytest.mark.parametrize("name,ok", [
    ("plugins/p/run", True), ("a", True), ("", False), ("/abs", False), ("a/../b", False), ("a//b", False),
    ("a/./b", False), ("a/", False), ("a\x00b", False), ("x" * 5000, False),
])
def test_arcname_rule(name: str, ok: bool) -> None:
    assert (arcname_problem(name) is None) is ok


@pytest.mark.parametrize("path,ok", [
    ("/etc/d/config.yaml", True), ("etc/x", False), ("/", False), ("/a/../b", False), ("/a/./b", False),
    ("//a", False), ("/etc/d/secret/k", False), ("/a\nb", False),
])
def test_destination_rule(path: str, ok: bool) -> None:
    assert (destination_problem(path) is None) is ok


def test_restore_plan_owners_modes_and_conflicts() -> None:
    m = parse_manifest(render_manifest(_manifest_doc()))
    by = {x.path: x for x in m.members}
    facts = {"/etc/d/config.yaml": DestFact(True, "file", "c" * 64),        # same bytes: left alone
             "/var/lib/d/d.db": DestFact(True, "file", "f" * 64),           # differs
             "/opt/p": DestFact(True, "dir")}
    plan = plan_restore(m, facts, to_dir=None, gateway=(984, 985), euid=0, egid=0, force=False)
    assert plan.refusals == ("/var/lib/d/d.db: exists with other contents (--force keeps it as .bak and replaces it)",)
    steps = {s.member.path: s for s in plan.steps}
    assert steps["config/config.yaml"].action == "same"
    assert (steps["plugins/p/run"].uid, steps["plugins/p/run"].mode) == (0, 0o755)
    acct = steps["accounts/default/f"]
    assert (acct.uid, acct.gid, acct.mode, acct.parent_mode) == (1001, 1001, 0o600, 0o711)
    assert by["accounts/default"].kind == "dir" and steps["accounts/default"].mode == 0o700
    forced = plan_restore(m, facts, to_dir=None, gateway=(984, 985), euid=0, egid=0, force=True)
    db = next(s for s in forced.steps if s.member.role == "db")
    assert forced.ok and db.action == "replace" and (db.uid, db.gid, db.mode) == (984, 985, 0o600)
    assert db.parent_mode == 0o711  # an account directory lies below the state directory
    assert forced.db_dest == "/var/lib/d/d.db"


def test_restore_plan_as_a_plain_user_refuses_account_trees_and_says_who_owns_plugins() -> None:
    m = parse_manifest(render_manifest(_manifest_doc()))
    plan = plan_restore(m, {}, to_dir="/stage", gateway=(984, 984), euid=984, egid=984, force=False)
    assert any("only root" in r and r.startswith("/stage/var/lib/d/accounts/default") for r in plan.refusals)
    assert any("uid 984, not root" in n for n in plan.notes)
    assert all(s.dest.startswith("/stage/") for s in plan.steps)


def test_a_write_ahead_log_is_a_difference() -> None:
    m = parse_manifest(render_manifest(_manifest_doc()))
    db = next(x for x in m.members if x.role == "db")
    plan = plan_restore(m, {"/var/lib/d/d.db": DestFact(True, "file", db.sha256, wal=True)}, to_dir=None,
                        gateway=(1, 1), euid=0, egid=0, force=False)
    assert any("write-ahead log" in r for r in plan.refusals)


NOW = datetime(2026, 12, 1, 7, 0, 0, tzinfo=timezone.utc)


def test_archive_names_and_retention() -> None:
    names = [archive_name("ductile", "config", datetime(2026, 11, d, tzinfo=timezone.utc), "K7P2Q") for d in range(1, 6)]
    names += [archive_name("ductile", "config", datetime(2026, 11, 5, tzinfo=timezone.utc), "K7P2Q", 2),
              archive_name("ductile", "all", NOW, "K7P2Q"), archive_name("other", "config", NOW, "K7P2Q"),
              "ductile-config-notes.txt", "ductile-config-20261101T000000Z-K7P2Q.tar.gz.partial"]
    assert names[0] == "ductile-config-20261101T000000Z-K7P2Q.tar.gz"
    # newest first: the 5th (-2, then plain), the 4th; the three before them go
    assert to_prune(names, 3, "ductile", "config") == [names[2], names[1], names[0]]
    assert to_prune(names, 100, "ductile", "config") == []


def test_proc_locks_parsing_and_holder() -> None:
    text = ["1: FLOCK  ADVISORY  WRITE 4019 fe:00:2146387 0 EOF",
            "2: POSIX  ADVISORY  WRITE 77 fe:00:2146387 0 EOF",
            "3: -> FLOCK  ADVISORY  WRITE 5000 fe:00:2146387 0 EOF",
            "4: FLOCK  ADVISORY  WRITE 66 00:2a:2146387 0 EOF",
            "5: FLOCK  ADVISORY  WRITE 12 fe:00:99 0 EOF"]
    holders = parse_proc_locks(text, 2146387)
    assert holders == {4019: (0xfe, 0), 66: (0, 0x2a)}
    assert pick_holder(holders, (0xfe, 0), "") == 4019
    assert pick_holder(holders, (0xfe, 1), "66") == 66        # overlayfs: another device number, the pid the file names
    assert pick_holder(holders, (0xfe, 1), "5000") is None     # the file names a pid that holds nothing
    assert pick_holder({}, (0xfe, 0), "4019") is None


# -- the strict tar reader: everything but regular files and directories is refused ----------

def _tgz(add) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _read_all(blob: bytes, limits: Limits = Limits()) -> list[tuple[str, str, bytes]]:
    reader = StrictTarReader(io.BytesIO(blob), limits, "x.tar.gz")
    out = []
    while (m := reader.next()) is not None:
        out.append((m.name, m.kind, b"".join(reader.chunks())))
    return out


def test_reader_reads_files_dirs_and_long_names() -> None:
    long = "d/" + "n" * 180 + "/f"

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        _file(tar, "d/a", b"hello")
        _file(tar, long, b"x" * 70000)

    assert _read_all(_tgz(add)) == [("d", "dir", b""), ("d/a", "file", b"hello"), (long, "file", b"x" * 70000)]


@pytest.mark.parametrize("kind,needle", [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "character device"),
    (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "FIFO"),
])
def test_reader_refuses_links_and_devices(kind: bytes, needle: str) -> None:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("evil")
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    with pytest.raises(RestoreRefused, match=needle):
        _read_all(_tgz(add))


def test_reader_refuses_gnu_format_a_bad_checksum_truncation_and_not_gzip() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        _file(tar, "a", b"x")
    with pytest.raises(RestoreRefused, match="ustar"):
        _read_all(buf.getvalue())
    raw = bytearray(gzip.decompress(_tgz(lambda t: _file(t, "a", b"hello"))))
    raw[0] ^= 1  # the name changes; the checksum no longer matches
    with pytest.raises(RestoreRefused, match="checksum"):
        _read_all(gzip.compress(bytes(raw)))
    good = gzip.decompress(_tgz(lambda t: _file(t, "a", b"y" * 5000)))
    with pytest.raises(RestoreRefused, match="truncated"):
        _read_all(gzip.compress(good[:1500]))
    with pytest.raises(RestoreRefused, match="not gzip"):
        _read_all(b"PK\x03\x04 this is a zip")


def test_reader_bounds_pax_headers_and_sizes_before_reading_them() -> None:
    def huge_pax(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x" * 100_000}
        tar.addfile(info, io.BytesIO(b""))

    with pytest.raises(RestoreRefused, match="pax header of"):
        _read_all(_tgz(huge_pax))
    with pytest.raises(RestoreRefused, match="over the limit"):
        _read_all(_tgz(lambda t: _file(t, "a", b"z" * 4096)), Limits(max_bytes=1000))
    with pytest.raises(RestoreRefused, match="entries"):
        _read_all(_tgz(lambda t: [_file(t, f"f{i}", b"") for i in range(5)]), Limits(max_entries=3))
