"""The trust rules as a table over plain stat facts (no filesystem involved)."""

from __future__ import annotations

import dataclasses
import stat

import pytest

from ductile.plugins.discovery import (
    RULE_ENTRYPOINT_PATH,
    RULE_EXECUTABLE,
    RULE_EXISTS,
    RULE_IN_PLUGIN_DIR,
    RULE_IN_ROOT,
    RULE_NOT_WRITABLE,
    RULE_OWNER,
    RULE_REGULAR,
    PathFacts,
    Stat,
    TrustSnapshot,
    evaluate_root,
    evaluate_trust,
)

ACCOUNT = 61001
REG, DIR, FIFO = stat.S_IFREG, stat.S_IFDIR, stat.S_IFIFO


def snapshot(**changes: object) -> TrustSnapshot:
    """A trustworthy plugin at /opt/p/echo; each row changes one fact."""
    base = TrustSnapshot(
        plugin="echo",
        manifest_path="/opt/p/echo/manifest.yaml",
        manifest=PathFacts("/opt/p/echo/manifest.yaml", Stat(REG | 0o644, 0)),
        plugin_dir="/opt/p/echo",
        entrypoint_written="run.py",
        entrypoint_real="/opt/p/echo/run.py",
        entrypoint=Stat(REG | 0o755, 0),
        dirs=(PathFacts("/opt/p/echo", Stat(DIR | 0o755, 0)),),
        roots=("/opt/p",),
        forbidden_owner_uids=frozenset({ACCOUNT, ACCOUNT + 1}),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def nested(mode: int, uid: int = 0) -> tuple[PathFacts, ...]:
    """/opt/p/team/echo/bin: the plugin sits one level down and its entrypoint in bin/."""
    return (PathFacts("/opt/p/team", Stat(DIR | mode, uid)), PathFacts("/opt/p/team/echo", Stat(DIR | 0o755, 0)),
            PathFacts("/opt/p/team/echo/bin", Stat(DIR | 0o755, 0)))


NESTED = {"plugin_dir": "/opt/p/team/echo", "manifest_path": "/opt/p/team/echo/manifest.yaml",
          "manifest": PathFacts("/opt/p/team/echo/manifest.yaml", Stat(REG | 0o644, 0)),
          "entrypoint_written": "bin/run", "entrypoint_real": "/opt/p/team/echo/bin/run"}

TABLE: list[tuple[str, dict[str, object], list[str]]] = [
    ("trusted", {}, []),
    ("owner-exec only is enough", {"entrypoint": Stat(REG | 0o700, 0)}, []),
    ("owned by a non-account uid", {"entrypoint": Stat(REG | 0o755, 1000)}, []),
    ("entrypoint in a subdirectory", {**NESTED, "dirs": nested(0o755)}, []),
    # the written path
    ("absolute entrypoint", {"entrypoint_written": "/bin/sh", "entrypoint_real": "/bin/sh"}, [RULE_ENTRYPOINT_PATH]),
    ("dotdot entrypoint", {"entrypoint_written": "../x/run.py", "entrypoint_real": "/opt/p/x/run.py"},
     [RULE_ENTRYPOINT_PATH]),
    ("empty entrypoint", {"entrypoint_written": ""}, [RULE_ENTRYPOINT_PATH]),
    # where it resolves
    ("missing entrypoint", {"entrypoint": None}, [RULE_EXISTS]),
    ("symlink escaping to /usr/bin", {"entrypoint_real": "/usr/bin/python3"}, [RULE_IN_PLUGIN_DIR]),
    ("symlink into a sibling plugin", {"entrypoint_real": "/opt/p/other/run.py"}, [RULE_IN_PLUGIN_DIR]),
    ("sibling sharing a name prefix", {"entrypoint_real": "/opt/p/echo2/run.py"}, [RULE_IN_PLUGIN_DIR]),
    ("entrypoint is the plugin dir itself", {"entrypoint_written": ".", "entrypoint_real": "/opt/p/echo",
                                             "entrypoint": Stat(DIR | 0o755, 0)}, [RULE_IN_PLUGIN_DIR]),
    ("plugin outside every root", {"plugin_dir": "/srv/echo", "entrypoint_real": "/srv/echo/run.py",
                                   "manifest": PathFacts("/srv/echo/manifest.yaml", Stat(REG | 0o644, 0))},
     [RULE_IN_ROOT]),
    ("no roots at all", {"roots": ()}, [RULE_IN_ROOT]),
    ("manifest links outside the plugin", {"manifest": PathFacts("/etc/shadow", Stat(REG | 0o640, 0))},
     [RULE_IN_PLUGIN_DIR]),
    # what it is
    ("entrypoint is a directory", {"entrypoint": Stat(DIR | 0o755, 0)}, [RULE_REGULAR]),
    ("entrypoint is a fifo", {"entrypoint": Stat(FIFO | 0o755, 0)}, [RULE_REGULAR]),
    ("manifest is a fifo", {"manifest": PathFacts("/opt/p/echo/manifest.yaml", Stat(FIFO | 0o644, 0))},
     [RULE_REGULAR]),
    ("not executable", {"entrypoint": Stat(REG | 0o644, 0)}, [RULE_EXECUTABLE]),
    # who can change it
    ("entrypoint group-writable", {"entrypoint": Stat(REG | 0o775, 0)}, [RULE_NOT_WRITABLE]),
    ("entrypoint world-writable", {"entrypoint": Stat(REG | 0o757, 0)}, [RULE_NOT_WRITABLE]),
    ("plugin dir group-writable", {"dirs": (PathFacts("/opt/p/echo", Stat(DIR | 0o775, 0)),)}, [RULE_NOT_WRITABLE]),
    ("plugin dir world-writable", {"dirs": (PathFacts("/opt/p/echo", Stat(DIR | 0o757, 0)),)}, [RULE_NOT_WRITABLE]),
    ("directory between root and plugin writable", {**NESTED, "dirs": nested(0o777)}, [RULE_NOT_WRITABLE]),
    ("manifest group-writable", {"manifest": PathFacts("/opt/p/echo/manifest.yaml", Stat(REG | 0o664, 0))},
     [RULE_NOT_WRITABLE]),
    ("writable and not executable", {"entrypoint": Stat(REG | 0o666, 0)}, [RULE_EXECUTABLE, RULE_NOT_WRITABLE]),
    ("entrypoint owned by an account", {"entrypoint": Stat(REG | 0o755, ACCOUNT)}, [RULE_OWNER]),
    ("plugin dir owned by an account", {"dirs": (PathFacts("/opt/p/echo", Stat(DIR | 0o755, ACCOUNT + 1)),)},
     [RULE_OWNER]),
    ("directory above the plugin owned by an account", {**NESTED, "dirs": nested(0o755, ACCOUNT)}, [RULE_OWNER]),
    ("manifest owned by an account", {"manifest": PathFacts("/opt/p/echo/manifest.yaml", Stat(REG | 0o644, ACCOUNT))},
     [RULE_OWNER]),
]


@pytest.mark.parametrize(("changes", "rules"), [(c, r) for _, c, r in TABLE], ids=[n for n, _, _ in TABLE])
def test_trust_rule(changes: dict[str, object], rules: list[str]) -> None:
    findings = evaluate_trust(snapshot(**changes))
    assert [f.field for f in findings] == [f"trust.{r}" for r in rules]
    for f in findings:
        assert f.severity == "error" and f.category == "plugin"
        assert f.where == snapshot(**changes).manifest_path          # the place
        assert f.message.startswith(f"plugin echo skipped: ")         # what and why
        assert f.fix                                                  # what to do


def test_messages_name_the_offending_path_and_its_fix() -> None:
    [f] = evaluate_trust(snapshot(entrypoint=Stat(REG | 0o775, 0)))
    assert "/opt/p/echo/run.py" in f.message and "group-writable" in f.message and "0775" in f.message
    assert f.fix == "chmod go-w /opt/p/echo/run.py"
    [f] = evaluate_trust(snapshot(entrypoint_real="/usr/bin/python3"))
    assert "/usr/bin/python3" in f.message and "/opt/p/echo" in f.fix
    [f] = evaluate_trust(snapshot(entrypoint=Stat(REG | 0o755, ACCOUNT)))
    assert f"uid {ACCOUNT}" in f.message and f.fix.startswith("chown root /opt/p/echo/run.py")


def test_no_forbidden_uids_means_any_owner_is_fine() -> None:
    assert evaluate_trust(snapshot(entrypoint=Stat(REG | 0o755, ACCOUNT), forbidden_owner_uids=frozenset())) == []


ROOTS = [
    ("trusted root", Stat(DIR | 0o755, 0), []),
    ("missing", None, ["does not exist"]),
    ("a file", Stat(REG | 0o644, 0), ["is not a directory"]),
    ("group-writable", Stat(DIR | 0o775, 0), ["group-writable"]),
    ("world-writable sticky", Stat(DIR | 0o1777, 0), ["group- and world-writable"]),
    ("owned by an account", Stat(DIR | 0o755, ACCOUNT), [f"owned by uid {ACCOUNT}"]),
]


@pytest.mark.parametrize(("facts", "needles"), [(f, n) for _, f, n in ROOTS], ids=[n for n, _, _ in ROOTS])
def test_root_rule(facts: Stat | None, needles: list[str]) -> None:
    findings = evaluate_root(2, "/opt/p", "/opt/p", facts, frozenset({ACCOUNT}))
    assert len(findings) == len(needles)
    for f, needle in zip(findings, needles):
        assert f.severity == "error" and f.field == "plugin_roots[2]" and needle in f.message and f.fix
