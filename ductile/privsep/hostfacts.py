"""The edge that reads what the side-door audit judges: /etc/passwd, /etc/group, sudoers
(following its include directives, the way sudo does) and the plugins' PATH entries.
Nothing here decides anything; ``sidedoor.audit`` does.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from ductile.privsep.pathfacts import Resolution, resolve
from ductile.privsep.sidedoor import (AccountFacts, GroupEntry, PasswdEntry, SideDoor, SudoRule, Sudoers, audit,
                                      parse_group, parse_passwd, parse_sudoers)
from ductile.privsep.trust import Owners

MAX_INCLUDES = 128
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class HostFacts:
    passwd: tuple[PasswdEntry, ...]
    groups: tuple[GroupEntry, ...]
    sudoers: Sudoers | None
    path_dirs: tuple[Resolution, ...]


def _read(path: str) -> str | None:
    """The text of ``path``; None when it does not exist. PermissionError propagates."""
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def read_sudoers(main: str) -> Sudoers | None:
    """Every rule of ``main`` and what it includes; None when there is no sudoers at all."""
    rules: list[SudoRule] = []
    unreadable: list[str] = []
    seen: set[str] = set()
    pending = [main]
    exists = False
    while pending and len(seen) < MAX_INCLUDES:
        path = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        try:
            text = _read(path)
        except OSError:
            unreadable.append(path)
            exists = True
            continue
        if text is None:
            continue
        exists = True
        found, includes = parse_sudoers(path, text)
        rules += found
        for kind, target in includes:
            if kind == "include":
                pending.append(target)
                continue
            try:
                names = sorted(os.listdir(target))
            except FileNotFoundError:
                continue
            except OSError:
                unreadable.append(target)
                continue
            # sudo skips names ending in '~' or containing '.' in an includedir
            pending += [posixpath.join(target, n) for n in names if not n.endswith("~") and "." not in n]
    return Sudoers(tuple(rules), tuple(unreadable)) if exists else None


def gather(path_value: str, etc: str = "/etc") -> HostFacts:
    passwd = _read(posixpath.join(etc, "passwd")) or ""
    group = _read(posixpath.join(etc, "group")) or ""
    dirs = tuple(resolve(d) if d.startswith("/") else Resolution(d, (), None) for d in path_value.split(":"))
    return HostFacts(parse_passwd(passwd), parse_group(group), read_sudoers(posixpath.join(etc, "sudoers")), dirs)


def side_doors(accounts: Sequence[AccountFacts], path_value: str, owners: Owners, etc: str = "/etc") -> list[SideDoor]:
    facts = gather(path_value, etc)
    return audit(accounts, facts.passwd, facts.groups, facts.sudoers, facts.path_dirs, owners)
