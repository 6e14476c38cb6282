"""The side-door audit: pure over fixture passwd/group/sudoers files (tests/fixtures/sidedoor),
the sudoers edge on a copy of them, and real ids created by the test on this host."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from ductile.privsep.hostfacts import read_sudoers
from ductile.privsep.pathfacts import Resolution
from ductile.privsep.sidedoor import (AccountFacts, SideDoor, Sudoers, audit, parse_group, parse_passwd,
                                      parse_sudoers)
from ductile.privsep.trust import Node, Owners, Step
from wallworld import MARKER_PLUGIN, destroy, free_ids, make_world, require_root

FIX = Path(__file__).parent / "fixtures" / "sidedoor"
PASSWD = parse_passwd((FIX / "passwd").read_text())
GROUPS = parse_group((FIX / "group").read_text())
GW = 984
OWNERS = Owners.of({990, 991, 61001}, GW)


def sudoers() -> Sudoers:
    s = read_sudoers(str(FIX / "sudoers"))
    assert s is not None
    return s


def acct(name: str, uid: int, gid: int | None = None, state_dir: str | None = None) -> AccountFacts:
    return AccountFacts(name, uid, uid if gid is None else gid, state_dir or f"/var/lib/ductile/accounts/{name}")


def doors(*accounts: AccountFacts, sudo: Sudoers | None = None, path: tuple[Resolution, ...] = ()) -> list[SideDoor]:
    return audit(accounts, PASSWD, GROUPS, sudo if sudo is not None else sudoers(), path, OWNERS)


def rules(found: list[SideDoor]) -> list[tuple[str, str, str | None]]:
    return [(d.severity, d.rule, d.account) for d in found]


def test_fixture_files_parse() -> None:
    assert {p.name for p in PASSWD} >= {"root", "alice", "svc-clean"} and "broken" not in {p.name for p in PASSWD}
    assert {g.name: g.members for g in GROUPS}["docker"] == ("svc-docker", "alice")


@pytest.mark.parametrize(("account", "expect"), [
    ("numeric uid, no passwd entry", []),
    ("system user, no login", []),
    ("home inside its state_dir", []),
    ("gid is the disk group", [("refuse", "privileged-gid")]),
    ("gid is root's group", [("refuse", "privileged-gid")]),
    ("a login user", [("warn", "login-user"), ("warn", "privileged-group"), ("warn", "sudo")]),
    ("member of docker", [("warn", "privileged-group")]),
    ("passwd primary group adm", [("warn", "privileged-group")]),
    ("named in sudoers", [("warn", "sudo")]),
    ("sudo by %group", [("warn", "sudo")]),
    ("sudo by #uid", [("warn", "sudo")]),
    ("sudo by User_Alias", [("warn", "sudo")]),
])
def test_account_table(account: str, expect: list[tuple[str, str]]) -> None:
    facts = {
        "numeric uid, no passwd entry": acct("plain", 61001),
        "system user, no login": acct("clean", 990),
        "home inside its state_dir": acct("home", 991),
        "gid is the disk group": acct("disky", 61001, 6),
        "gid is root's group": acct("rooty", 61001, 0),
        "a login user": acct("alice", 1000),
        "member of docker": acct("docky", 992),
        "passwd primary group adm": acct("admp", 997, 997),
        "named in sudoers": acct("sudoer", 993),
        "sudo by %group": acct("grouped", 994),
        "sudo by #uid": acct("byuid", 995),
        "sudo by User_Alias": acct("aliased", 996),
    }[account]
    found = doors(facts)
    assert [(s, r) for s, r, _ in rules(found)] == expect
    for d in found:
        assert d.account == facts.name and d.message and d.fix


def test_messages_name_the_group_rule_and_fix() -> None:
    [d] = doors(acct("disky", 61001, 6))
    assert "`disk`" in d.message and "block devices" in d.message and d.path == "accounts.disky.gid"
    login = doors(acct("alice", 1000))
    assert "/bin/bash" in login[0].message and "/home/alice" in login[0].message
    assert "gpasswd -d alice docker" == login[1].fix
    sudo = [d for d in doors(acct("sudoer", 993)) if d.rule == "sudo"]
    assert sudo[0].path.endswith("sudoers:8") and "NOPASSWD" in sudo[0].message


def test_sudoers_edge_follows_includes_once_and_skips_dotted_and_backup_names() -> None:
    s = sudoers()
    sources = [r.source for r in s.rules]
    assert sum(1 for x in sources if x.endswith("sudoers.d/extra:2")) == 1   # #include and @includedir: read once
    assert not any("README" in x or x.endswith("~") or "ops~" in x for x in sources)
    assert not [d for d in doors(acct("clean", 990)) if d.rule == "sudo"]  # !svc-clean, dotted and ~ files


def test_sudoers_absent_or_unreadable() -> None:
    assert doors(acct("sudoer", 993), sudo=Sudoers(())) == []              # no rules at all
    none = audit([acct("sudoer", 993)], PASSWD, GROUPS, None, (), OWNERS)    # sudo not installed
    assert none == []
    [d] = doors(acct("plain", 61001), sudo=Sudoers((), ("/etc/sudoers",)))
    assert (d.severity, d.rule) == ("warn", "sudo-unchecked") and "as root" in d.fix


def test_everyone_rule_and_continuations() -> None:
    rules_, _ = parse_sudoers("/etc/sudoers", "ALL ALL=(ALL) \\\n   /usr/bin/id\n%#1500 ALL=(ALL) ALL\n")
    assert [r.users for r in rules_] == [("ALL",), ("%#1500",)]
    found = audit([acct("plain", 61001), acct("grouped", 994)], PASSWD, GROUPS, Sudoers(tuple(rules_)), (), OWNERS)
    assert rules(found) == [("warn", "sudo", "grouped"), ("warn", "sudo", "grouped"), ("warn", "sudo", "plain")]


def _dir(path: str, mode: int, uid: int = 0) -> Node:
    return Node(path, stat.S_IFDIR | mode, uid, uid)


def _res(path: str, *nodes: Node, missing: str | None = None) -> Resolution:
    steps = [Step(None, _dir("/", 0o755))]
    for n in nodes:
        steps.append(Step(steps[-1].node, n))
    return Resolution(path, tuple(steps), None if missing else path, missing)


@pytest.mark.parametrize(("entry", "needle"), [
    (_res("/usr/bin", _dir("/usr", 0o755), _dir("/usr/bin", 0o755)), None),
    (_res("/srv/bin", _dir("/srv", 0o755), _dir("/srv/bin", 0o777)), "world-writable"),
    (_res("/srv/bin", _dir("/srv", 0o755), _dir("/srv/bin", 0o755, 61001)), "owned by uid 61001"),
    (_res("/srv/bin", _dir("/srv", 0o755, 990), _dir("/srv/bin", 0o755)), "owned by uid 990"),
    (_res("/tmp/bin", _dir("/tmp", 0o1777), missing="/tmp/bin"), "could create it"),
    (_res("/opt/none", _dir("/opt", 0o755), missing="/opt/none"), None),
    (Resolution("/home/a/bin", (Step(None, _dir("/", 0o755)), Step(_dir("/", 0o755), _dir("/home", 0o755)),
                                 Step(_dir("/home", 0o755), _dir("/home/a", 0o700, 61001))), None,
                error="cannot look at /home/a/bin: Permission denied"), "owned by uid 61001"),
    (Resolution("", (), None), "working directory"),
    (Resolution("bin", (), None), "working directory"),
])
def test_path_entries(entry: Resolution, needle: str | None) -> None:
    found = doors(acct("plain", 61001), path=(entry,))
    if needle is None:
        assert found == []
    else:
        assert found and all(d.severity == "refuse" and d.account is None for d in found)
        assert any(needle in d.message for d in found), [d.message for d in found]


# ---- real ids, created by the test (feasibility §4.2), root gateway ---------------------------

def _useradd(*args: str) -> str:
    name = f"dtst-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", *args, name], check=True, capture_output=True)
    return name


def _userdel(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


@pytest.mark.privileged
def test_real_ids_login_user_privileged_group_and_gid_and_a_writable_path_entry() -> None:
    """A login user in `adm`, a clean system user, and an account whose gid is `disk`:
    verify and doctor report each; boot refuses only the disk account; --strict refuses
    the warnings; a world-writable directory on the plugins' PATH refuses the boot."""
    require_root()
    import grp
    import pwd

    login = _useradd("--shell", "/bin/bash", "--home-dir", "/home/dtst-login", "--user-group", "-G", "adm")
    clean = _useradd("--shell", "/usr/sbin/nologin", "--home-dir", "/nonexistent", "--user-group")
    w = None
    try:
        lu, cu = pwd.getpwnam(login), pwd.getpwnam(clean)
        disk_gid = grp.getgrnam("disk").gr_gid
        [disky] = free_ids(1)
        w = make_world(0, ["default", "untrusted"], {"mark": "{run_as: clean}", "other": "{run_as: login}",
                                                    "disky": "{run_as: disky}"},
                       {"mark": MARKER_PLUGIN, "other": MARKER_PLUGIN, "disky": MARKER_PLUGIN},
                       fixed={"login": (lu.pw_uid, lu.pw_gid), "clean": (cu.pw_uid, cu.pw_gid), "disky": (disky, disk_gid)})

        report = json.loads(w.run("account", "verify", "--json").stdout)
        rows = {a["name"]: [(c["label"], c["verdict"]) for c in a["checks"] if "side door" in c["label"]]
                for a in report["accounts"]}
        assert rows["clean"] == [("side doors", "NONE FOUND")]
        assert ("side door: privileged-gid", "REFUSED") in rows["disky"]
        assert ("side door: login-user", "WARN") in rows["login"] and ("side door: privileged-group", "WARN") in rows["login"]
        assert report["side_door_warnings"] >= 2
        strict = w.run("account", "verify", "--strict", "--json")
        assert strict.returncode == 1
        assert any(c["verdict"] == "REFUSED" and c["label"] == "side door: login-user"
                   for a in json.loads(strict.stdout)["accounts"] for c in a["checks"])

        doc = json.loads(w.run("doctor", "--json").stdout)
        sd = [f for f in doc["findings"] if f["category"] == "sidedoor"]
        assert any(f["severity"] == "error" and "`disk`" in f["message"] for f in sd)
        assert any(f["severity"] == "warning" and login in f["message"] and "`adm`" in f["message"] for f in sd)
        strict_doc = json.loads(w.run("doctor", "--json", "--strict").stdout)
        assert not [f for f in strict_doc["findings"] if f["category"] == "sidedoor" and f["severity"] == "warning"]

        marker = w.base / "state" / "marker-clean"
        ran = w.plugin_run("mark", {"marker": str(w.state_dir("clean") / "m")})
        assert ran.returncode == 0, ran.stderr                    # warnings do not stop the boot
        refused = w.plugin_run("disky", {"marker": str(marker)})
        out = json.loads(refused.stdout)
        assert refused.returncode == 1 and out["outcome"]["error"]["kind"] == "account_refused" and out["pid"] is None
        assert "`disk`" in refused.stderr.splitlines()[-1] and not marker.exists()

        bad = w.base / "bin"
        bad.mkdir()
        os.chmod(bad, 0o777)
        text = w.config_text().replace("service: {", f"service: {{plugin_path: [{bad}, /usr/bin, /bin], ", 1)
        (w.etc / "config.yaml").write_text(text)
        proc = subprocess.run(w_cli(w, "plugin", "run", "mark", "--payload", "{}"),
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}, timeout=120)
        assert proc.returncode == 1
        lines_ = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines_) == 1 and str(bad) in lines_[0] and "world-writable" in lines_[0] and "plugins' PATH" in lines_[0]
    finally:
        if w is not None:
            destroy(w)
        _userdel(login)
        _userdel(clean)
        assert subprocess.run(["getent", "passwd", login], capture_output=True).returncode == 2


def w_cli(w, *args: str) -> list[str]:  # type: ignore[no-untyped-def]
    import sys

    return [sys.executable, "-m", "ductile", *args, "--config", str(w.etc)]

