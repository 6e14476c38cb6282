"""Filesystem reconciliation, planned from ``lstat`` facts (SPEC §5.6). Pure.

Two kinds of path matter before any plugin runs:

* the **secret surface** (config dir and files, state DB and its WAL, vault, age key):
  owned by the gateway uid; loose config/DB/vault modes are tightened (never widened); an
  age key that others could read is *exposed* — tightening it now would hide that it may
  already have been read, so it is a refusal that says "rotate it";
* each confined account's **state_dir**: a real directory, mode 0700, owned uid:gid, under
  parents the account can traverse (o+x, the 0711 floor) and nobody else can rewrite.

Every step from ``/`` to each path is judged by ``trust.step_problems`` (the rule the
plugin trust checks use too): a symlinked ancestor, an ancestor an account owns, or one
others can write (a root-owned sticky directory such as ``/tmp`` is safe only where the
entry below it exists and belongs to root or the gateway) is refused. A missing component
is created only under a directory nobody else can write, and only by root; the gateway
chowns only directories it creates itself. An existing directory owned by anyone but its
account (root included) is refused, never taken over.

Refusals are **scoped**: a problem with the secret surface refuses the whole gateway; a
problem with one account's state_dir refuses that account only (its jobs fail with the
finding, other accounts keep running). ``doctor`` prints this plan; the boot applies it
(``fsapply``), re-checking the same rules on the descriptors it walks.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ductile.privsep.trust import Node, Owners, Step, creatable_by_others, parent_problem, step_problems

ACCOUNT_DIR_MODE = 0o700
PARENT_DIR_MODE = 0o711
KEY_ROLE = "age key"
ROTATE = "ductile vault rotate-key"


@dataclass(frozen=True)
class SecretPath:
    path: str
    role: str          # "config directory", "state database", "age key", ...
    is_dir: bool


@dataclass(frozen=True)
class AccountDir:
    name: str
    uid: int
    gid: int
    state_dir: str


@dataclass(frozen=True)
class Action:
    """One change. ``scope``: the account it serves (None: the gateway's own surface).
    ``by``: who carries it out — the gateway through a descriptor, or a helper dropped to
    the account (a cap-only gateway cannot chmod an account's directory; the account can).
    ``expect_uid``: the owner the target must still have when the walk reaches it."""

    op: Literal["mkdir", "chmod", "chown"]
    path: str
    reason: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    scope: str | None = None
    by: Literal["gateway", "account"] = "gateway"
    expect_uid: int | None = None
    before: str = ""

    def describe(self) -> str:
        who = f" as account {self.scope} (a helper dropped to uid {self.expect_uid})" if self.by == "account" else ""
        if self.op == "chown":
            return f"chown {self.uid}:{self.gid} {self.path}{who} ({self.reason})"
        return f"{self.op} {self.mode:04o} {self.path}{who} ({self.reason})"

    def after(self) -> str:
        if self.op == "chown":
            return f"owner {self.uid}:{self.gid}"
        if self.op == "mkdir":
            return f"directory {self.mode:04o}"
        return f"mode {self.mode:04o}"


@dataclass(frozen=True)
class Refusal:
    path: str
    rule: str
    message: str
    fix: str
    scope: str | None = None  # None: the gateway refuses to start; else only that account


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    refusals: tuple[Refusal, ...]

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def blocking(self) -> tuple[Refusal, ...]:
        """Refusals that stop the gateway itself."""
        return tuple(r for r in self.refusals if r.scope is None)

    def refused_accounts(self) -> dict[str, Refusal]:
        """The first refusal of each account that cannot run."""
        out: dict[str, Refusal] = {}
        for r in self.refusals:
            if r.scope is not None and r.scope not in out:
                out[r.scope] = r
        return out

    def runnable(self) -> tuple[Action, ...]:
        """What the apply carries out, in order: nothing for a refused account, and one
        mkdir of a parent that several accounts share."""
        refused = self.refused_accounts()
        seen: set[tuple[str, str]] = set()
        out = []
        for a in self.actions:
            if (a.scope is not None and a.scope in refused) or (a.op, a.path) in seen:
                continue
            seen.add((a.op, a.path))
            out.append(a)
        return tuple(out)

def ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``['/', '/a', '/a/b']`` (outermost first)."""
    out = []
    parent = posixpath.dirname(posixpath.normpath(path))
    while True:
        out.append(parent)
        if parent == "/":
            break
        parent = posixpath.dirname(parent)
    return list(reversed(out))


def is_inside(child: str, parent: str) -> bool:
    child, parent = posixpath.normpath(child), posixpath.normpath(parent)
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def paths_to_snapshot(surface: Iterable[SecretPath], accounts: Iterable[AccountDir]) -> list[str]:
    """Every path the planner needs an ``lstat`` of: each target and all its ancestors."""
    out: list[str] = []
    for path in [s.path for s in surface] + [a.state_dir for a in accounts]:
        out += ancestors(path) + [posixpath.normpath(path)]
    return sorted(set(out))


def describe_node(node: Node | None) -> str:
    """How a path looked before an action (for the log and the ledger)."""
    if node is None:
        return "absent"
    kind = "directory" if node.is_dir else "symlink" if node.is_symlink else "file"
    return f"{kind} {node.perms:04o} owner {node.uid}:{node.gid}"


class _Planner:
    def __init__(self, nodes: Mapping[str, Node], gateway_uid: int, can_chown: bool, owners: Owners) -> None:
        self.nodes = nodes
        self.gateway_uid = gateway_uid
        self.can_chown = can_chown
        self.owners = owners
        self.actions: list[Action] = []
        self.refusals: list[Refusal] = []

    def refuse(self, path: str, rule: str, message: str, fix: str, scope: str | None) -> None:
        self.refusals.append(Refusal(path, rule, message, fix, scope))

    def walk_ancestors(self, target: str, what: str, scope: str | None) -> tuple[Node | None, str | None] | None:
        """Judge every existing ancestor of ``target``. Returns (deepest existing ancestor,
        first missing ancestor or None), or None after a refusal."""
        previous: Node | None = None
        for path in ancestors(target):
            node = self.nodes.get(path)
            if node is None:
                return previous, path
            if node.is_symlink:
                self.refuse(path, "ancestor-symlink",
                            f"{path} (on the way to {what} {target}) is a symlink; the gateway acts only on real paths "
                            "so nobody can redirect it", f"point {what} at the real path, without symlinks", scope)
                return None
            if not node.is_dir:
                self.refuse(path, "ancestor-type", f"{path} (on the way to {what} {target}) is not a directory",
                            f"fix the path of {what}", scope)
                return None
            for p in step_problems(Step(previous, node), self.owners):
                self.refuse(p.path, f"ancestor-{p.rule}", f"{p.message} (on the way to {what} {target})", p.fix, scope)
                return None
            previous = node
        return previous, None

    # -- the gateway's own secrets -----------------------------------------------------------

    def secret(self, s: SecretPath, accounts: list[AccountDir]) -> None:
        for acct in accounts:
            if is_inside(s.path, acct.state_dir):
                self.refuse(s.path, "secret-inside-account-dir",
                            f"the {s.role} {s.path} lies inside accounts.{acct.name}'s state_dir, which that account controls",
                            f"move it out of {acct.state_dir}", None)
                return
        node = self.nodes.get(s.path)
        if node is None:
            return  # nothing to protect yet (and nothing to create: its owner does that)
        walked = self.walk_ancestors(s.path, f"the {s.role}", None)
        if walked is None:
            return
        parent = walked[0]
        if node.is_symlink:
            self.refuse(s.path, "secret-symlink", f"the {s.role} {s.path} is a symlink; its target's ownership cannot be vouched for",
                        "replace the symlink with the real file or directory", None)
            return
        if node.is_dir != s.is_dir:
            want = "a directory" if s.is_dir else "a regular file"
            self.refuse(s.path, "secret-type", f"the {s.role} {s.path} must be {want}", f"make it {want}", None)
            return
        if parent is not None:
            p = parent_problem(parent, node, self.owners)
            if p:
                self.refuse(s.path, f"secret-{p.rule}", f"the {s.role}: {p.message}", p.fix, None)
                return
        if s.role == KEY_ROLE:
            self.key(s, node)
            return
        if node.uid != self.gateway_uid:
            self.refuse(s.path, "secret-owner",
                        f"the {s.role} {s.path} is owned by uid {node.uid}, not the gateway (uid {self.gateway_uid}) — it must be gateway-owned",
                        f"chown {self.gateway_uid} {s.path}", None)
            return
        if node.perms & 0o077:
            self.actions.append(Action("chmod", s.path, f"{s.role} was {node.perms:04o}; group/other access removed",
                                       mode=node.perms & ~0o077, expect_uid=self.gateway_uid, before=describe_node(node)))

    def key(self, s: SecretPath, node: Node) -> None:
        """Secret zero: a key others could read is exposed, whatever its mode is now."""
        if node.uid != self.gateway_uid:
            exposed = f"is owned by uid {node.uid}, not the gateway (uid {self.gateway_uid})"
            fix = f"chown {self.gateway_uid} {s.path} && chmod 0600 {s.path}, then rotate it as the gateway: {ROTATE}"
        elif node.perms & 0o077:
            exposed = f"has mode {node.perms:04o} (group/other can {'read' if node.perms & 0o044 else 'write'} it)"
            fix = f"chmod 0600 {s.path}, then rotate it: {ROTATE}"
        else:
            return
        self.refuse(s.path, "key-exposed", f"the age key {s.path} {exposed}: the key may have been read, so it is not "
                    "quietly tightened", f"{fix} (and roll every secret value: ductile vault set NAME)", None)

    # -- each account's state_dir -------------------------------------------------------------

    def account(self, acct: AccountDir, surface_dirs: list[SecretPath]) -> None:
        sd = posixpath.normpath(acct.state_dir)
        field = f"accounts.{acct.name}.state_dir"
        scope = acct.name
        provision = f"install -d -m 0700 -o {acct.uid} -g {acct.gid} {sd}  (or `ductile deploy render tmpfiles`)"
        for s in surface_dirs:
            if is_inside(sd, s.path):
                self.refuse(sd, "account-dir-inside-secret", f"{field} {sd} lies inside the {s.role} {s.path}, which is closed to accounts",
                            "put account directories under a 0711 directory such as /var/lib/ductile/accounts", scope)
                return
        walked = self.walk_ancestors(sd, field, scope)
        if walked is None:
            return
        parent, missing = walked
        for path in ancestors(sd):
            node = self.nodes.get(path)
            if node is None:
                break
            if not node.perms & 0o001:
                self.refuse(path, "account-parent-traversal",
                            f"{path} (mode {node.perms:04o}) is not traversable by accounts, so {field} is unreachable",
                            f"chmod o+x {path}  (0711 is the floor for account parents)", scope)
                return
        node = self.nodes.get(sd) if missing is None else None
        if node is None:
            self.create(acct, sd, parent, missing, field, provision)
            return
        if node.is_symlink or not node.is_dir:
            self.refuse(sd, "account-dir-type", f"{field} {sd} is {'a symlink' if node.is_symlink else 'not a directory'}",
                        f"remove it and {provision}", scope)
            return
        if parent is not None:
            p = parent_problem(parent, node, self.owners)
            if p:
                self.refuse(sd, "account-dir-replaceable", f"{field}: {p.message}", p.fix, scope)
                return
        if (node.uid, node.gid) != (acct.uid, acct.gid):
            who = "root" if node.uid == 0 else "the gateway" if node.uid == self.gateway_uid else f"uid {node.uid}"
            self.refuse(sd, "account-dir-owner",
                        f"{field} {sd} is owned by {node.uid}:{node.gid} ({who}), not the account's {acct.uid}:{acct.gid}; "
                        "an existing directory is never taken over",
                        f"choose a new path for {field} (one that does not exist yet); this one belongs to {who}"
                        + (f" — or, if it really is the account's, chown {acct.uid}:{acct.gid} {sd}" if node.uid != 0 else ""),
                        scope)
            return
        if node.perms != ACCOUNT_DIR_MODE:
            by: Literal["gateway", "account"] = "gateway" if self.can_chown else "account"
            self.actions.append(Action("chmod", sd, f"{field} must be 0700, was {node.perms:04o}", mode=ACCOUNT_DIR_MODE,
                                       scope=scope, by=by, expect_uid=acct.uid, before=describe_node(node)))

    def create(self, acct: AccountDir, sd: str, parent: Node | None, missing: str | None, field: str,
               provision: str) -> None:
        scope = acct.name
        first = missing or sd
        if parent is not None:
            why = creatable_by_others(parent, self.owners)
            if why:
                self.refuse(first, "missing-under-writable",
                            f"{first} (for {field}) does not exist and {why}: someone else could create it (or a symlink) "
                            "before the gateway does",
                            f"create it yourself as root (install -d -m 0711 {first}), or choose a path under a root-owned directory",
                            scope)
                return
        if not self.can_chown:
            if missing is not None:
                self.refuse(missing, "account-parent-missing", f"{missing} (parent of {field}) does not exist",
                            f"create it: install -d -m 0711 {missing}", scope)
            else:
                self.refuse(sd, "account-dir-missing", f"{field} {sd} is not provisioned",
                            f"{provision}; a cap-only gateway cannot create it", scope)
            return
        chain = ancestors(sd) + [sd]
        for path in chain[chain.index(first):]:
            if path == sd:
                self.actions.append(Action("mkdir", sd, field, mode=ACCOUNT_DIR_MODE, scope=scope,
                                           expect_uid=self.gateway_uid, before="absent"))
                self.actions.append(Action("chown", sd, f"{field} belongs to its account", uid=acct.uid, gid=acct.gid,
                                           scope=scope, expect_uid=self.gateway_uid, before=f"owner {self.gateway_uid}"))
            else:
                self.actions.append(Action("mkdir", path, f"parent of {field}", mode=PARENT_DIR_MODE, scope=scope,
                                           expect_uid=self.gateway_uid, before="absent"))

def plan_reconcile(surface: Iterable[SecretPath], accounts: Iterable[AccountDir], nodes: Mapping[str, Node],
                   *, gateway_uid: int, can_chown: bool, must_reach: Iterable[tuple[str, str]] = ()) -> Plan:
    """Every action and refusal for this host, in a stable order (secrets, then accounts by name).

    ``nodes``: ``lstat`` of every path in ``paths_to_snapshot`` (absent: does not exist).
    ``must_reach``: (label, path) pairs accounts need to read, such as plugin roots; one
    inside a secret directory would become unreachable once that directory is 0700.
    """
    surface = list(surface)
    accts = sorted(accounts, key=lambda a: a.name)
    planner = _Planner(nodes, gateway_uid, can_chown, Owners.of((a.uid for a in accts), gateway_uid))
    for s in surface:
        planner.secret(s, accts)
    surface_dirs = [s for s in surface if s.is_dir]
    for label, path in must_reach:
        for s in surface_dirs:
            if is_inside(path, s.path):
                planner.refuse(path, "reachable-inside-secret",
                               f"{label} {path} lies inside the {s.role} {s.path}, which is closed to accounts (0700)",
                               f"move {label} out of {s.path}, e.g. to /opt/ductile/plugins", None)
    for acct in accts:
        planner.account(acct, surface_dirs)
    return Plan(tuple(planner.actions), tuple(planner.refusals))
