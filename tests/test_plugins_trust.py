"""The trust rules as tables over plain facts (no filesystem involved): the one step rule,
the #! parser (env followed), and a plugin's whole tree and interpreter chain."""

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
    RULE_WHOLE_TREE,
    TrustSnapshot,
    evaluate_root,
    evaluate_trust,
)
from ductile.plugins.exectrust import RULE_INTERPRETER, RULE_LINK, RULE_SEARCH_PATH, InterpreterLink, TreeEntry
from ductile.plugins.shebang import EXECVP_DEFAULT_PATH, Shebang, env_call, parse_shebang
from ductile.privsep.pathfacts import Resolution
from ductile.privsep.trust import Node, Owners, Step, chain_problems, creatable_by_others, parent_problem

ACCOUNT = 61001
GW = 984
OWNERS = Owners.of({ACCOUNT, ACCOUNT + 1}, GW)
REG, DIR, FIFO, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFIFO, stat.S_IFLNK


def d(path: str, mode: int = 0o755, uid: int = 0) -> Node:
    return Node(path, DIR | mode, uid, 0)


def f(path: str, mode: int = 0o644, uid: int = 0) -> Node:
    return Node(path, REG | mode, uid, 0)


# ---- the step rule (privsep.trust) ---------------------------------------------------------

STEPS = [
    ("root-owned dir under a root-owned dir", d("/opt"), d("/opt/p"), None),
    ("entry in a group-writable dir", d("/srv", 0o775), d("/srv/p"), "replaceable"),
    ("entry in a world-writable dir", d("/srv", 0o777), d("/srv/p"), "replaceable"),
    ("root's entry in root's sticky /tmp", d("/tmp", 0o1777), d("/tmp/w"), None),
    ("gateway's entry in root's sticky /tmp", d("/tmp", 0o1777), d("/tmp/w", uid=GW), None),
    ("an account's entry in sticky /tmp", d("/tmp", 0o1777), d("/tmp/w", uid=ACCOUNT), "replaceable"),
    ("a stranger's entry in sticky /tmp", d("/tmp", 0o1777), d("/tmp/w", uid=1000), "replaceable"),
    ("root's entry in a stranger's sticky dir", d("/x", 0o1777, uid=1000), d("/x/w"), "replaceable"),
    ("a symlink in sticky /tmp owned by an account", d("/tmp", 0o1777), Node("/tmp/l", LNK | 0o777, ACCOUNT),
     "replaceable"),
]


@pytest.mark.parametrize(("parent", "node", "rule"), [(p, n, r) for _, p, n, r in STEPS], ids=[s[0] for s in STEPS])
def test_parent_rule(parent: Node, node: Node, rule: str | None) -> None:
    problem = parent_problem(parent, node, OWNERS)
    assert (problem.rule if problem else None) == rule
    if problem:
        assert node.path in problem.message and problem.fix


def test_chain_judges_owner_every_step_and_the_leaf() -> None:
    steps = [Step(None, d("/")), Step(d("/"), d("/srv")), Step(d("/srv"), d("/srv/p", uid=ACCOUNT)),
             Step(d("/srv/p", uid=ACCOUNT), f("/srv/p/run", 0o777))]
    rules = [(p.rule, p.path) for p in chain_problems(steps, OWNERS)]
    assert rules == [("owned-by-account", "/srv/p"), ("writable", "/srv/p/run")]
    # a symlink's own mode means nothing
    assert chain_problems([Step(None, d("/")), Step(d("/"), Node("/l", LNK | 0o777, 0))], OWNERS) == []


@pytest.mark.parametrize(("directory", "why"), [
    (d("/var/lib"), ""), (d("/tmp", 0o1777), "world-writable"), (d("/srv", 0o775), "group-writable"),
    (d("/home/a", 0o700, ACCOUNT), f"account uid {ACCOUNT}"), (d("/gw", 0o700, GW), ""),
])
def test_creatable_by_others(directory: Node, why: str) -> None:
    got = creatable_by_others(directory, OWNERS)
    assert (why in got and got) if why else got == ""


# ---- the #! line and env ------------------------------------------------------------------

@pytest.mark.parametrize(("head", "expect"), [
    (b"#!/usr/bin/python3\nimport x", Shebang("/usr/bin/python3", None)),
    (b"#! /bin/sh -e\n", Shebang("/bin/sh", "-e")),
    (b"#!/usr/bin/env -S python3 -u \n", Shebang("/usr/bin/env", "-S python3 -u")),
    (b"#!\t/usr/bin/env\tpython3\r\n", Shebang("/usr/bin/env", "python3")),
    (b"#!python3\n", Shebang("python3", None)),
    (b"#!\n", Shebang("", None)),
    (b"\x7fELF\x02\x01", None),
    (b"import os\n", None),
])
def test_parse_shebang(head: bytes, expect: Shebang | None) -> None:
    assert parse_shebang(head) == expect


@pytest.mark.parametrize(("argument", "command", "path", "error"), [
    ("python3", "python3", "/p", ""),
    ("-S python3 -u", "python3", "/p", ""),
    ("-S PATH=/tmp/x python3", "python3", "/tmp/x", ""),
    ("-i python3", None, None, "not understood"),     # one word: env's getopt reads " python3" as flags
    ("-S -i python3", "python3", EXECVP_DEFAULT_PATH, ""),
    ("-S -i PATH=/o python3", "python3", "/o", ""),
    ("-S -u HOME -C /tmp python3", "python3", "/p", ""),
    ("--split-string=uv run --script", "uv", "/p", ""),
    ("-S /opt/bin/py -x", "/opt/bin/py", "/p", ""),
    ("python3 -u", "python3 -u", "/p", ""),              # no -S: one word, as env itself sees it
    (None, None, None, "names no command"),
    ("-S", None, None, "needs a value"),
    ("-S A=1", None, None, "names no command"),
    ("-Z python3", None, None, "not understood"),
])
def test_env_call(argument: str | None, command: str | None, path: str | None, error: str) -> None:
    call = env_call(argument, "/p")
    assert call.command == command and (error in call.error if error else call.error == "")
    if command:
        assert call.path == path


# ---- a plugin: structure, whole tree, chain below the root, interpreter --------------------

PY = "/usr/bin/python3.11"
PY_STEPS = (Step(None, d("/")), Step(d("/"), d("/usr")), Step(d("/usr"), d("/usr/bin")),
            Step(d("/usr/bin"), Node("/usr/bin/python3", LNK | 0o777, 0)), Step(d("/usr/bin"), f(PY, 0o755)))
PYTHON = (InterpreterLink("/usr/bin/python3", "the #! line of /opt/p/echo/run.py",
                          Resolution("/usr/bin/python3", PY_STEPS, PY)),)


def tree(**changes: Node | None) -> tuple[TreeEntry, ...]:
    base = {"manifest.yaml": f("/opt/p/echo/manifest.yaml"), "run.py": f("/opt/p/echo/run.py", 0o755),
            "_stopwatch.py": f("/opt/p/echo/_stopwatch.py"), "lib": d("/opt/p/echo/lib"),
            "lib/util.py": f("/opt/p/echo/lib/util.py"), "__pycache__": d("/opt/p/echo/__pycache__"),
            "__pycache__/_stopwatch.cpython-311.pyc": f("/opt/p/echo/__pycache__/_stopwatch.cpython-311.pyc")}
    merged = {**base, **changes}
    return tuple(TreeEntry(rel, node) for rel, node in sorted(merged.items()) if node is not None)


def snapshot(**changes: object) -> TrustSnapshot:
    """A trustworthy plugin at /opt/p/echo with a helper, a package and a bytecode cache;
    each row changes one fact."""
    base = TrustSnapshot(
        plugin="echo",
        manifest_path="/opt/p/echo/manifest.yaml",
        manifest=f("/opt/p/echo/manifest.yaml"),
        plugin_dir="/opt/p/echo",
        entrypoint_written="run.py",
        entrypoint_real="/opt/p/echo/run.py",
        entrypoint=f("/opt/p/echo/run.py", 0o755),
        roots=("/opt/p",),
        owners=OWNERS,
        below_root=(Step(d("/opt/p"), d("/opt/p/echo")),),
        tree=tree(),
        interpreter=PYTHON,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


NESTED = {"plugin_dir": "/opt/p/team/echo", "manifest_path": "/opt/p/team/echo/manifest.yaml",
          "manifest": f("/opt/p/team/echo/manifest.yaml"), "entrypoint_written": "bin/run",
          "entrypoint_real": "/opt/p/team/echo/bin/run", "entrypoint": f("/opt/p/team/echo/bin/run", 0o755), "tree": ()}


def below(team_mode: int = 0o755, team_uid: int = 0) -> tuple[Step, ...]:
    team = d("/opt/p/team", team_mode, team_uid)
    return (Step(d("/opt/p"), team), Step(team, d("/opt/p/team/echo")))


def link(rel: str, real: str | None) -> TreeEntry:
    return TreeEntry(rel, Node(f"/opt/p/echo/{rel}", LNK | 0o777, 0), real)


TABLE: list[tuple[str, dict[str, object], list[str]]] = [
    ("trusted", {}, []),
    ("owner-exec only is enough", {"entrypoint": f("/opt/p/echo/run.py", 0o700)}, []),
    ("owned by a non-account uid", {"tree": tree(**{"run.py": f("/opt/p/echo/run.py", 0o755, 1000)})}, []),
    ("entrypoint in a subdirectory", {**NESTED, "below_root": below()}, []),
    ("a symlink inside the plugin", {"tree": tree() + (link("alias.py", "/opt/p/echo/lib/util.py"),)}, []),
    ("no interpreter (an ELF binary)", {"interpreter": ()}, []),
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
                                             "entrypoint": d("/opt/p/echo")}, [RULE_IN_PLUGIN_DIR]),
    ("plugin outside every root", {"plugin_dir": "/srv/echo", "entrypoint_real": "/srv/echo/run.py",
                                   "manifest": f("/srv/echo/manifest.yaml")}, [RULE_IN_ROOT]),
    ("no roots at all", {"roots": ()}, [RULE_IN_ROOT]),
    ("manifest links outside the plugin", {"manifest": f("/etc/shadow", 0o640)}, [RULE_IN_PLUGIN_DIR]),
    # what it is
    ("entrypoint is a directory", {"entrypoint": d("/opt/p/echo/run.py")}, [RULE_REGULAR]),
    ("entrypoint is a fifo", {"entrypoint": Node("/opt/p/echo/run.py", FIFO | 0o755, 0)}, [RULE_REGULAR]),
    ("manifest is a fifo", {"manifest": Node("/opt/p/echo/manifest.yaml", FIFO | 0o644, 0)}, [RULE_REGULAR]),
    ("not executable", {"entrypoint": f("/opt/p/echo/run.py", 0o644)}, [RULE_EXECUTABLE]),
    ("a device in the tree", {"tree": tree(**{"dev": Node("/opt/p/echo/dev", stat.S_IFCHR | 0o600, 0)})},
     ["plugin-tree"]),
    ("the tree could not be listed whole", {"tree_error": "cannot list /opt/p/echo/x: Permission denied"},
     [RULE_WHOLE_TREE]),
    # who can change it: the whole tree, not only the entrypoint
    ("entrypoint group-writable", {"tree": tree(**{"run.py": f("/opt/p/echo/run.py", 0o775)})}, [RULE_NOT_WRITABLE]),
    ("entrypoint world-writable", {"tree": tree(**{"run.py": f("/opt/p/echo/run.py", 0o757)})}, [RULE_NOT_WRITABLE]),
    ("helper world-writable", {"tree": tree(**{"_stopwatch.py": f("/opt/p/echo/_stopwatch.py", 0o666)})},
     [RULE_NOT_WRITABLE]),
    ("vendored module in a subdirectory owned by an account",
     {"tree": tree(**{"lib/util.py": f("/opt/p/echo/lib/util.py", 0o644, ACCOUNT)})}, [RULE_OWNER]),
    ("package directory group-writable", {"tree": tree(lib=d("/opt/p/echo/lib", 0o775))}, [RULE_NOT_WRITABLE]),
    ("bytecode cache world-writable (not locked, still guarded)",
     {"tree": tree(__pycache__=d("/opt/p/echo/__pycache__", 0o777))}, [RULE_NOT_WRITABLE]),
    ("plugin dir group-writable", {"below_root": (Step(d("/opt/p"), d("/opt/p/echo", 0o775)),)}, [RULE_NOT_WRITABLE]),
    ("plugin dir owned by an account", {"below_root": (Step(d("/opt/p"), d("/opt/p/echo", uid=ACCOUNT + 1)),)},
     [RULE_OWNER]),
    ("directory between root and plugin writable", {**NESTED, "below_root": below(0o777)}, [RULE_NOT_WRITABLE]),
    ("directory between root and plugin owned by an account", {**NESTED, "below_root": below(0o755, ACCOUNT)},
     [RULE_OWNER]),
    ("manifest group-writable", {"tree": tree(**{"manifest.yaml": f("/opt/p/echo/manifest.yaml", 0o664)})},
     [RULE_NOT_WRITABLE]),
    ("manifest owned by an account", {"tree": tree(**{"manifest.yaml": f("/opt/p/echo/manifest.yaml", 0o644, ACCOUNT)})},
     [RULE_OWNER]),
    ("a symlink out of the plugin", {"tree": tree() + (link("py", "/usr/lib/python3/os.py"),)}, [RULE_LINK]),
    ("a dangling symlink", {"tree": tree() + (link("gone", None),)}, [RULE_LINK]),
]


@pytest.mark.parametrize(("changes", "rules"), [(c, r) for _, c, r in TABLE], ids=[n for n, _, _ in TABLE])
def test_trust_rule(changes: dict[str, object], rules: list[str]) -> None:
    findings = evaluate_trust(snapshot(**changes))
    assert [f.field for f in findings] == [f"trust.{r}" for r in rules]
    for finding in findings:
        assert finding.severity == "error" and finding.category == "plugin"
        assert finding.where == snapshot(**changes).manifest_path     # the place
        assert finding.message.startswith("plugin echo skipped: ")   # what and why
        assert finding.fix                                           # what to do


def test_messages_name_the_offending_path_and_its_fix() -> None:
    [fd] = evaluate_trust(snapshot(tree=tree(**{"_stopwatch.py": f("/opt/p/echo/_stopwatch.py", 0o664)})))
    assert "/opt/p/echo/_stopwatch.py" in fd.message and "group-writable" in fd.message and "0664" in fd.message
    assert fd.fix == "chmod go-w /opt/p/echo/_stopwatch.py"
    [fd] = evaluate_trust(snapshot(entrypoint_real="/usr/bin/python3"))
    assert "/usr/bin/python3" in fd.message and "/opt/p/echo" in fd.fix
    [fd] = evaluate_trust(snapshot(tree=tree(**{"run.py": f("/opt/p/echo/run.py", 0o755, ACCOUNT)})))
    assert f"uid {ACCOUNT}" in fd.message and fd.fix.startswith("chown root /opt/p/echo/run.py")


def test_no_account_uids_means_any_owner_is_fine() -> None:
    owned = tree(**{"run.py": f("/opt/p/echo/run.py", 0o755, ACCOUNT)})
    assert evaluate_trust(snapshot(tree=owned, owners=Owners.of((), GW))) == []


# ---- the interpreter chain ------------------------------------------------------------------

def res(path: str, *chain: Node, real: str | None = "", missing: str | None = None) -> Resolution:
    steps = [Step(None, d("/"))]
    for node in chain:
        steps.append(Step(steps[-1].node, node))
    return Resolution(path, tuple(steps), path if real == "" else real, missing)


WRAP_OWNED = InterpreterLink("/opt/wrap/py", "the #! line of run.py",
                             res("/opt/wrap/py", d("/opt"), d("/opt/wrap"), f("/opt/wrap/py", 0o755, ACCOUNT)))
TMP_OWNED = InterpreterLink("/tmp/py", "the #! line of run.py", res("/tmp/py", d("/tmp", 0o1777), f("/tmp/py", 0o755, ACCOUNT)))
TMP_ROOT = InterpreterLink("/tmp/py", "the #! line of run.py", res("/tmp/py", d("/tmp", 0o1777), f("/tmp/py", 0o755)))
ENV = InterpreterLink("/usr/bin/env", "the #! line of run.py", res("/usr/bin/env", d("/usr"), d("/usr/bin"), f("/usr/bin/env", 0o755)))


def via_env(*searched: Resolution, found: Resolution | None = None) -> InterpreterLink:
    return InterpreterLink("python3", "env's lookup", found or res(PY, d("/usr"), d("/usr/bin"), f(PY, 0o755)), searched)


USR_BIN = res("/usr/bin", d("/usr"), d("/usr/bin"))
CHAINS: list[tuple[str, tuple[InterpreterLink, ...], list[str]]] = [
    ("/usr/bin/python3 through its symlink", PYTHON, []),
    ("env python3 on a clean PATH", (ENV, via_env(USR_BIN)), []),
    ("a root-owned interpreter in sticky /tmp", (TMP_ROOT,), []),
    ("a wrapper script owned by another account", (WRAP_OWNED,), ["owned by uid"]),
    ("an account's interpreter in sticky /tmp", (TMP_OWNED,), ["owned by uid", "renamed or replaced"]),
    ("a group-writable interpreter", (InterpreterLink("/opt/py", "x", res("/opt/py", d("/opt"), f("/opt/py", 0o775))),),
     ["group-writable"]),
    ("an interpreter in a world-writable directory",
     (InterpreterLink("/srv/py", "x", res("/srv/py", d("/srv", 0o777), f("/srv/py", 0o755))),), ["could be replaced"]),
    ("not executable", (InterpreterLink("/opt/py", "x", res("/opt/py", d("/opt"), f("/opt/py", 0o644))),),
     ["not executable"]),
    ("missing", (InterpreterLink("/opt/py", "x", res("/opt/py", d("/opt"), real=None, missing="/opt/py")),),
     ["cannot be used"]),
    ("relative #! path", (InterpreterLink("python3", "x", None, problem="not an absolute path"),), ["not an absolute"]),
    ("env searches a world-writable directory first",
     (ENV, via_env(res("/srv/bin", d("/srv"), d("/srv/bin", 0o777)), USR_BIN)), ["world-writable"]),
    ("env searches the working directory (empty PATH entry)",
     (ENV, via_env(Resolution("", (), None), USR_BIN)), ["working directory"]),
    ("env searches a missing directory an account could create",
     (ENV, via_env(res("/tmp/bin", d("/tmp", 0o1777), real=None, missing="/tmp/bin"), USR_BIN)), ["could create it"]),
    ("env searches a missing directory under root's /usr/local",
     (ENV, via_env(res("/usr/local/sbin", d("/usr"), d("/usr/local"), real=None, missing="/usr/local/sbin"), USR_BIN)),
     []),
]


@pytest.mark.parametrize(("chain", "needles"), [(c, n) for _, c, n in CHAINS], ids=[n for n, _, _ in CHAINS])
def test_interpreter_rule(chain: tuple[InterpreterLink, ...], needles: list[str]) -> None:
    findings = evaluate_trust(snapshot(interpreter=chain))
    assert len(findings) == len(needles), [x.message for x in findings]
    for finding, needle in zip(findings, needles):
        assert finding.field in (f"trust.{RULE_INTERPRETER}", f"trust.{RULE_SEARCH_PATH}")
        assert needle in finding.message, (needle, finding.message)
        assert finding.fix


def test_interpreter_owned_by_an_account_names_the_path_and_who() -> None:
    [finding] = evaluate_trust(snapshot(interpreter=(WRAP_OWNED,)))
    assert "/opt/wrap/py" in finding.message and f"uid {ACCOUNT}" in finding.message
    assert finding.fix.startswith("chown root /opt/wrap/py")


ROOTS = [
    ("trusted root", d("/opt/p"), []),
    ("missing", None, ["does not exist"]),
    ("a file", f("/opt/p"), ["is not a directory"]),
    ("group-writable", d("/opt/p", 0o775), ["group-writable"]),
    ("world-writable sticky", d("/opt/p", 0o1777), ["group- and world-writable"]),
    ("owned by an account", d("/opt/p", 0o755, ACCOUNT), [f"owned by uid {ACCOUNT}"]),
]


@pytest.mark.parametrize(("facts", "needles"), [(x, n) for _, x, n in ROOTS], ids=[n for n, _, _ in ROOTS])
def test_root_rule(facts: Node | None, needles: list[str]) -> None:
    findings = evaluate_root(2, "/opt/p", "/opt/p", facts, OWNERS)
    assert len(findings) == len(needles)
    for finding, needle in zip(findings, needles):
        assert finding.severity == "error" and finding.field == "plugin_roots[2]" and needle in finding.message
        assert finding.fix


@pytest.mark.parametrize(("parent_mode", "parent_uid", "needle"), [
    (0o755, ACCOUNT, f"owned by uid {ACCOUNT}"),      # an account owns a directory above the root
    (0o777, 0, "world-writable"),                     # anyone can rename the root away
    (0o1777, 0, "sticky"),                            # /tmp-like: only safe if the root belongs to root/gateway
])
def test_every_ancestor_of_a_root_is_judged(parent_mode: int, parent_uid: int, needle: str) -> None:
    parent = d("/srv/team", parent_mode, parent_uid)
    root = d("/srv/team/plugins", 0o755, ACCOUNT if parent_mode == 0o1777 else 0)
    chain = Resolution("/srv/team/plugins", (Step(None, d("/")), Step(d("/"), d("/srv")), Step(d("/srv"), parent),
                                             Step(parent, root)), root.path)
    findings = evaluate_root(0, root.path, root.path, root, OWNERS, chain)
    assert findings and any(needle in x.message for x in findings), [x.message for x in findings]
    assert all("none of its plugins is trusted" in x.message for x in findings)
