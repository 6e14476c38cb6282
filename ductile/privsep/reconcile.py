"""Filesystem reconciliation, planned from stat snapshots (SPEC §5.6). Pure.

Two kinds of path matter before any plugin runs:

* the **secret surface** (config dir and files, state DB and its WAL, vault, age key):
  must be owned by the gateway uid; group/other bits are stripped (never widened); a
  foreign owner, a symlink or a wrong type is a refusal;
* each confined account's **state_dir**: a real directory, mode 0700, owned uid:gid, under
  parents the account can traverse (o+x, the 0711 floor) and nobody else can rewrite.
  A root gateway may create or fix it; a cap-only gateway (no CAP_CHOWN/CAP_FOWNER)
  can only verify what sysusers/tmpfiles provisioned.

``plan_reconcile`` returns every action and every refusal; the boot applies all actions
only when there is no refusal (all-or-refuse). ``doctor`` and ``account explain`` print
the same plan without applying it.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

ACCOUNT_DIR_MODE = 0o700


@dataclass(frozen=True)
class Snapshot:
    """What ``lstat`` said about one path (``exists=False`` when it is absent)."""

    path: str
    exists: bool
    is_dir: bool = False
    is_symlink: bool = False
    mode: int = 0  # permission bits, 0o7777
    uid: int = -1
    gid: int = -1


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
    op: Literal["mkdir", "chmod", "chown"]
    path: str
    reason: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def describe(self) -> str:
        if self.op == "chown":
            return f"chown {self.uid}:{self.gid} {self.path} ({self.reason})"
        return f"{self.op} {self.mode:04o} {self.path} ({self.reason})"


@dataclass(frozen=True)
class Refusal:
    path: str
    rule: str
    message: str
    fix: str


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    refusals: tuple[Refusal, ...]

    @property
    def ok(self) -> bool:
        return not self.refusals


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
    """Every path the planner needs a snapshot of."""
    out: list[str] = [s.path for s in surface]
    for acct in accounts:
        out += ancestors(acct.state_dir) + [acct.state_dir]
    return sorted(set(out))


def _plan_secret(s: SecretPath, snap: Snapshot, gateway_uid: int, accounts: list[AccountDir],
                 actions: list[Action], refusals: list[Refusal]) -> None:
    for acct in accounts:
        if is_inside(s.path, acct.state_dir):
            refusals.append(Refusal(s.path, "secret-inside-account-dir",
                                    f"the {s.role} {s.path} lies inside accounts.{acct.name}'s state_dir, which that account controls",
                                    f"move it out of {acct.state_dir}"))
            return
    if not snap.exists:
        return
    if snap.is_symlink:
        refusals.append(Refusal(s.path, "secret-symlink", f"the {s.role} {s.path} is a symlink; its target's ownership cannot be vouched for",
                                "replace the symlink with the real file or directory"))
        return
    if snap.is_dir != s.is_dir:
        want = "a directory" if s.is_dir else "a regular file"
        refusals.append(Refusal(s.path, "secret-type", f"the {s.role} {s.path} must be {want}", f"make it {want}"))
        return
    if snap.uid != gateway_uid:
        refusals.append(Refusal(s.path, "secret-owner",
                                f"the {s.role} {s.path} is owned by uid {snap.uid}, not the gateway (uid {gateway_uid}) — it must be gateway-owned",
                                f"chown {gateway_uid} {s.path}"))
        return
    if snap.mode & 0o077:
        actions.append(Action("chmod", s.path, f"{s.role} was {snap.mode:04o}; group/other access removed",
                              mode=snap.mode & ~0o077))


def _plan_account(acct: AccountDir, snaps: Mapping[str, Snapshot], gateway_uid: int, can_chown: bool,
                  surface_dirs: list[SecretPath], actions: list[Action], refusals: list[Refusal]) -> None:
    sd = posixpath.normpath(acct.state_dir)
    field = f"accounts.{acct.name}.state_dir"
    provision = f"install -d -m 0700 -o {acct.uid} -g {acct.gid} {sd}  (or `ductile deploy render tmpfiles`)"
    for s in surface_dirs:
        if is_inside(sd, s.path):
            refusals.append(Refusal(sd, "account-dir-inside-secret",
                                    f"{field} {sd} lies inside the {s.role} {s.path}, which is closed to accounts",
                                    "put account directories under a 0711 directory such as /var/lib/ductile/accounts"))
            return
    missing_parent = False
    for parent in ancestors(sd):
        p = snaps.get(parent, Snapshot(parent, False))
        if not p.exists:
            missing_parent = True
            if not can_chown:
                refusals.append(Refusal(parent, "account-parent-missing", f"{parent} (parent of {field}) does not exist",
                                        f"create it: install -d -m 0711 {parent}"))
                return
            actions.append(Action("mkdir", parent, f"parent of {field}", mode=0o711))
            continue
        if p.is_symlink:
            continue  # resolved by the kernel; the directory it names is checked by traversal below
        if not p.is_dir:
            refusals.append(Refusal(parent, "account-parent-type", f"{parent} (parent of {field}) is not a directory",
                                    "fix the state_dir path"))
            return
        if not p.mode & 0o001:
            refusals.append(Refusal(parent, "account-parent-traversal",
                                    f"{parent} (mode {p.mode:04o}) is not traversable by accounts, so {field} is unreachable",
                                    f"chmod o+x {parent}  (0711 is the floor for account parents)"))
        if p.mode & 0o022 and not p.mode & stat.S_ISVTX:
            refusals.append(Refusal(parent, "account-parent-writable",
                                    f"{parent} (mode {p.mode:04o}) is group/world-writable: others could replace {field}",
                                    f"chmod go-w {parent}"))
    snap = snaps.get(sd, Snapshot(sd, False))
    if not snap.exists or missing_parent:
        if not can_chown:
            refusals.append(Refusal(sd, "account-dir-missing", f"{field} {sd} is not provisioned",
                                    f"{provision}; a cap-only gateway cannot create it"))
            return
        actions.append(Action("mkdir", sd, f"{field}", mode=ACCOUNT_DIR_MODE))
        actions.append(Action("chown", sd, f"{field} belongs to its account", uid=acct.uid, gid=acct.gid))
        return
    if snap.is_symlink or not snap.is_dir:
        refusals.append(Refusal(sd, "account-dir-type", f"{field} {sd} is {'a symlink' if snap.is_symlink else 'not a directory'}",
                                f"remove it and {provision}"))
        return
    if (snap.uid, snap.gid) != (acct.uid, acct.gid):
        if can_chown and snap.uid in (gateway_uid, acct.uid):
            actions.append(Action("chown", sd, f"{field} belongs to its account", uid=acct.uid, gid=acct.gid))
        else:
            refusals.append(Refusal(sd, "account-dir-owner",
                                    f"{field} {sd} is owned by {snap.uid}:{snap.gid}, not the account's {acct.uid}:{acct.gid}",
                                    f"chown {acct.uid}:{acct.gid} {sd}" + ("" if can_chown else " (as root; the gateway cannot)")))
            return
    if snap.mode != ACCOUNT_DIR_MODE:
        if can_chown:
            actions.append(Action("chmod", sd, f"{field} must be 0700, was {snap.mode:04o}", mode=ACCOUNT_DIR_MODE))
        else:
            refusals.append(Refusal(sd, "account-dir-mode", f"{field} {sd} has mode {snap.mode:04o}, not 0700",
                                    f"chmod 0700 {sd} (as root or the account)"))


def plan_reconcile(surface: Iterable[SecretPath], accounts: Iterable[AccountDir], snapshots: Mapping[str, Snapshot],
                   *, gateway_uid: int, can_chown: bool, must_reach: Iterable[tuple[str, str]] = ()) -> Plan:
    """Every action and refusal for this host, in a stable order (secrets, then accounts by name).

    ``must_reach``: (label, path) pairs accounts need to read, such as plugin roots; one
    inside a secret directory would become unreachable once that directory is 0700.
    """
    surface = list(surface)
    accts = sorted(accounts, key=lambda a: a.name)
    actions: list[Action] = []
    refusals: list[Refusal] = []
    for s in surface:
        _plan_secret(s, snapshots.get(s.path, Snapshot(s.path, False)), gateway_uid, accts, actions, refusals)
    surface_dirs = [s for s in surface if s.is_dir]
    for label, path in must_reach:
        for s in surface_dirs:
            if is_inside(path, s.path):
                refusals.append(Refusal(path, "reachable-inside-secret",
                                        f"{label} {path} lies inside the {s.role} {s.path}, which is closed to accounts (0700)",
                                        f"move {label} out of {s.path}, e.g. to /opt/ductile/plugins"))
    for acct in accts:
        _plan_account(acct, snapshots, gateway_uid, can_chown, surface_dirs, actions, refusals)
    # one mkdir per parent even when two accounts share it
    seen: set[tuple[str, str]] = set()
    unique = []
    for a in actions:
        if (a.op, a.path) not in seen:
            seen.add((a.op, a.path))
            unique.append(a)
    return Plan(tuple(unique), tuple(refusals))
