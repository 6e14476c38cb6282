"""Who could change a path ductile relies on: one rule for every step from ``/``. Pure.

Plugin code, its interpreter, the plugin roots, an account's state_dir, the secret surface
and the plugins' PATH are only as safe as every directory the kernel walks through to reach
them: whoever can rename or create an entry in one of those directories can put something
else there. So the same rule judges each *step* (a directory and the entry reached from it),
whoever asks — discovery, the reconcile planner, the reconcile's fd walk, the side-door audit:

    entry                      | its parent directory                         | verdict
    ---------------------------|----------------------------------------------|--------------------------
    owned by an account uid    | any                                          | unsafe: the account owns it
    any                        | not group/world-writable                     | safe
    owned by root or gateway   | sticky, owned by root or gateway, g/o-writable| safe (only owners may rename)
    owned by anyone else       | sticky, g/o-writable                         | unsafe: its owner may swap it
    any                        | group/world-writable, not sticky             | unsafe: anyone may swap it
    any                        | sticky but owned by an account or a stranger | unsafe

The last element of a chain (the file or directory itself) must also not be
group/world-writable (a symlink's own mode means nothing). A component that does not exist
yet is safe to create only under a directory no account can write: under ``/tmp`` someone
else may create it first (see ``creatable_by_others``).

Group-writable counts as writable by others whatever the group: accounts drop their
supplementary groups, but other local users keep theirs, and a rule that depended on group
membership would need facts this layer does not have.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class Node:
    """One directory entry as ``lstat`` (or ``fstat`` of an fd) saw it."""

    path: str
    mode: int  # full st_mode: type and permission bits
    uid: int
    gid: int = -1

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def sticky(self) -> bool:
        return bool(self.mode & stat.S_ISVTX)

    @property
    def perms(self) -> int:
        return stat.S_IMODE(self.mode)

    def writable_by_others(self) -> str:
        """'group', 'world', 'group- and world' or '' (symlinks: always '')."""
        if self.is_symlink:
            return ""
        bits = []
        if self.mode & stat.S_IWGRP:
            bits.append("group")
        if self.mode & stat.S_IWOTH:
            bits.append("world")
        return "- and ".join(bits)


@dataclass(frozen=True)
class Step:
    """``node`` reached from the directory ``parent`` (None only for ``/``)."""

    parent: Node | None
    node: Node


@dataclass(frozen=True)
class Problem:
    rule: str      # owned-by-account | replaceable | writable
    path: str
    message: str
    fix: str


@dataclass(frozen=True)
class Owners:
    """Whose ownership means what: accounts are the adversary; root and the gateway are trusted."""

    accounts: frozenset[int]
    trusted: frozenset[int]

    @classmethod
    def of(cls, account_uids: Iterable[int], gateway_uid: int) -> Owners:
        return cls(frozenset(account_uids), frozenset({0, gateway_uid}))


def owner_problem(node: Node, owners: Owners) -> Problem | None:
    if node.uid in owners.accounts:
        return Problem("owned-by-account", node.path,
                       f"{node.path} is owned by uid {node.uid}, an account plugins run as, so a plugin could change it",
                       f"chown root {node.path} (it belongs to the operator, not to an account)")
    return None


def parent_problem(parent: Node, node: Node, owners: Owners) -> Problem | None:
    """Could someone other than root or the gateway rename or replace ``node`` in ``parent``?"""
    who = parent.writable_by_others()
    if not who:
        return None
    if parent.sticky and parent.uid in owners.trusted and node.uid in owners.trusted:
        return None
    if parent.sticky:
        why = (f"{node.path} sits in {parent.path}, a sticky {who}-writable directory owned by uid {parent.uid}"
               if parent.uid not in owners.trusted else
               f"{node.path} sits in the sticky {who}-writable {parent.path} but belongs to uid {node.uid}, "
               "not to root or the gateway")
        return Problem("replaceable", node.path, f"{why}, so it could be renamed or replaced",
                       f"use a path whose directories belong to root (e.g. under /opt or /var/lib), not under {parent.path}")
    return Problem("replaceable", node.path,
                   f"{parent.path} (mode {parent.perms:04o}) is {who}-writable, so {node.path} could be replaced",
                   f"chmod go-w {parent.path}")


def leaf_problem(node: Node) -> Problem | None:
    """The thing itself (not an ancestor) must not be group/world-writable."""
    who = node.writable_by_others()
    if who:
        kind = "directory" if node.is_dir else "file"
        return Problem("writable", node.path,
                       f"{kind} {node.path} is {who}-writable (mode {node.perms:04o}), so others could change it",
                       f"chmod go-w {node.path}")
    return None


def step_problems(step: Step, owners: Owners) -> list[Problem]:
    out = []
    own = owner_problem(step.node, owners)
    if own:
        out.append(own)
    if step.parent is not None:
        rep = parent_problem(step.parent, step.node, owners)
        if rep:
            out.append(rep)
    return out


def chain_problems(steps: Sequence[Step], owners: Owners, *, leaf: bool = True) -> list[Problem]:
    """Every problem along a resolution chain; ``leaf``: also judge the last node's own mode."""
    out: list[Problem] = []
    for step in steps:
        out += step_problems(step, owners)
    if leaf and steps:
        problem = leaf_problem(steps[-1].node)
        if problem:
            out.append(problem)
    return _unique(out)


def creatable_by_others(directory: Node, owners: Owners) -> str:
    """Why an account (or anyone but root/gateway) could create an entry in ``directory``
    before ductile does; '' when nobody could. Sticky or not: creating needs only write."""
    if directory.uid in owners.accounts:
        return f"{directory.path} belongs to account uid {directory.uid}"
    who = directory.writable_by_others()
    if who:
        return f"{directory.path} (mode {directory.perms:04o}) is {who}-writable"
    return ""


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.rule, p.path) not in seen:
            seen.add((p.rule, p.path))
            out.append(p)
    return out

