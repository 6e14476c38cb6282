"""Side doors: ways out of the wall that the uid drop does not close. Pure.

The drop gives a plugin an account's uid and gid and nothing else — but the *host* may
have given that uid more: a privileged primary group, a login, a sudo rule, or a
directory on the plugins' PATH it can write (then every plugin that runs ``python3`` runs
the account's program). These facts live in /etc/passwd, /etc/group and sudoers, read by
``hostfacts``; the verdicts are decided here:

    finding                                                  | verdict
    ---------------------------------------------------------|---------------------------------
    the account's gid is a privileged host group (root, disk,| REFUSE that account
      shadow, docker, lxd, incus, sudo, wheel, adm, ...)     |
    a directory on the plugins' PATH an account can write,   | REFUSE the gateway (every plugin
      create, or replace (or '' / relative: the state_dir)   |   searches it)
    the uid is a real login user (a login shell, a home      | WARN
      outside its state_dir)                                 |
    the account's name is listed in a privileged group, or   | WARN (dropped at spawn, but the
      its passwd primary group is privileged                 |   uid holds it at every login)
    a sudoers rule names the account (user, %group, #uid,    | WARN
      ALL, or a User_Alias of those)                         |
    sudoers exists but cannot be read here                   | WARN (not checked, never a pass)

``--strict`` (doctor, ``account verify``) turns every WARN into a refusal.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ductile.privsep.pathfacts import Resolution
from ductile.privsep.trust import Owners, Problem, chain_problems, creatable_by_others

Severity = Literal["refuse", "warn"]

PRIVILEGED_GROUPS: dict[str, str] = {
    "root": "root's own group",
    "sudo": "may run anything as root through sudo",
    "wheel": "may become root through sudo or su",
    "admin": "may run anything as root through sudo",
    "adm": "reads every system log",
    "systemd-journal": "reads the whole journal",
    "disk": "reads and writes raw block devices, so every file",
    "kmem": "reads kernel memory",
    "shadow": "reads password hashes",
    "tty": "writes to every terminal",
    "docker": "the Docker socket is root",
    "lxd": "the LXD socket is root",
    "incus": "the Incus socket is root",
    "incus-admin": "the Incus socket is root",
    "libvirt": "starts virtual machines with host devices",
    "staff": "writes /usr/local, which is on root's PATH",
}
NOLOGIN_SHELLS = frozenset({"", "/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync",
                            "/usr/bin/nologin"})


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class SudoRule:
    source: str                 # file:line
    users: tuple[str, ...]      # the user list, aliases expanded
    text: str


@dataclass(frozen=True)
class Sudoers:
    rules: tuple[SudoRule, ...]
    unreadable: tuple[str, ...] = ()   # files that exist but this process cannot read


@dataclass(frozen=True)
class AccountFacts:
    name: str
    uid: int
    gid: int
    state_dir: str


@dataclass(frozen=True)
class SideDoor:
    severity: Severity
    rule: str
    account: str | None          # None: affects every account (a PATH directory)
    path: str
    message: str
    fix: str

    def strict(self) -> SideDoor:
        return SideDoor("refuse", self.rule, self.account, self.path, self.message, self.fix)


# ---- parsing ---------------------------------------------------------------------------------

def parse_passwd(text: str) -> tuple[PasswdEntry, ...]:
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or line.startswith(("#", "+", "-")):
            continue
        try:
            out.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3]), parts[5], parts[6].strip()))
        except ValueError:
            continue
    return tuple(out)


def parse_group(text: str) -> tuple[GroupEntry, ...]:
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or line.startswith(("#", "+", "-")):
            continue
        try:
            members = tuple(m.strip() for m in parts[3].split(",") if m.strip())
            out.append(GroupEntry(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return tuple(out)


INCLUDE = re.compile(r"^[#@](include|includedir)\s+(\S+)\s*$")
_SKIP = ("Defaults", "Cmnd_Alias", "Host_Alias", "Runas_Alias")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            continue
        out.append((start, buf + raw))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def _strip_comment(line: str) -> str:
    """'#' starts a comment, except '#<digits>' (a uid) and include directives."""
    out = []
    i = 0
    while i < len(line):
        if line[i] == "#" and not (i + 1 < len(line) and line[i + 1].isdigit()):
            break
        out.append(line[i])
        i += 1
    return "".join(out).strip()


def parse_sudoers(source: str, text: str) -> tuple[list[SudoRule], list[tuple[str, str]]]:
    """The user specifications of one sudoers file, and its include directives
    (("include"|"includedir", path)) for the edge to follow."""
    aliases: dict[str, list[str]] = {}
    specs: list[tuple[int, list[str], str]] = []
    includes: list[tuple[str, str]] = []
    for n, raw in _logical_lines(text):
        stripped = raw.strip()
        m = INCLUDE.match(stripped)
        if m:
            path = m.group(2)
            if not path.startswith("/"):
                path = posixpath.join(posixpath.dirname(source), path)
            includes.append((m.group(1), path))
            continue
        line = _strip_comment(stripped)
        if not line or line.startswith(_SKIP):
            continue
        if line.startswith("User_Alias"):
            for part in line[len("User_Alias"):].split(":"):
                name, _, members = part.partition("=")
                aliases[name.strip()] = [u.strip() for u in members.split(",") if u.strip()]
            continue
        if "=" not in line:
            continue
        head = re.sub(r"\s*,\s*", ",", line.split("=", 1)[0].strip())
        words = head.split()
        if len(words) < 2:
            continue
        specs.append((n, words[0].split(","), line))
    rules = []
    for n, users, line in specs:
        expanded: list[str] = []
        for u in users:
            expanded += aliases.get(u, [u])
        rules.append(SudoRule(f"{source}:{n}", tuple(expanded), line))
    return rules, includes


# ---- the audit --------------------------------------------------------------------------------

def _matches(user: str, name: str | None, uid: int, group_names: set[str], gids: set[int]) -> bool:
    if user.startswith("!"):
        return False
    if user == "ALL":
        return True
    if user.startswith("%#"):
        return user[2:].isdigit() and int(user[2:]) in gids
    if user.startswith("%"):
        return user[1:] in group_names
    if user.startswith("#"):
        return user[1:].isdigit() and int(user[1:]) == uid
    return name is not None and user == name


def path_entry_problems(res: Resolution, owners: Owners, via: str) -> list[Problem]:
    """Could an account plant a program in this PATH entry (searched by ``via``)?"""
    if not res.path.startswith("/"):
        shown = repr(res.path) if res.path else "an empty entry"
        return [Problem("relative", res.path or ":", f"the PATH searched by {via} holds {shown}, which means the "
                        "working directory — the account's own state_dir", "use only absolute directories on the plugins' PATH")]
    # judge every step walked, even when the walk stopped short (EACCES under an account's 0700 home)
    out = chain_problems(res.steps, owners, leaf=res.real is not None)
    if res.missing and res.steps:
        why = creatable_by_others(res.steps[-1].node, owners)
        if why:
            out.append(Problem("creatable", res.missing, f"{res.missing} (searched by {via}) does not exist and {why}: "
                               "an account could create it and plant a program there",
                               f"create {res.missing} as root, or take it off the plugins' PATH"))
    return out


def audit(accounts: Sequence[AccountFacts], passwd: Iterable[PasswdEntry], groups: Iterable[GroupEntry],
          sudoers: Sudoers | None, path_dirs: Sequence[Resolution], owners: Owners) -> list[SideDoor]:
    """Every side door of every account, accounts in name order, the PATH last.
    ``sudoers`` None: no sudoers file on this host (sudo is not installed)."""
    by_uid = {p.uid: p for p in passwd}
    groups = list(groups)
    by_gid = {g.gid: g for g in groups}
    out: list[SideDoor] = []
    for acct in sorted(accounts, key=lambda a: a.name):
        field = f"accounts.{acct.name}"
        group = by_gid.get(acct.gid)
        gname = group.name if group else ("root" if acct.gid == 0 else None)
        if gname in PRIVILEGED_GROUPS:
            out.append(SideDoor("refuse", "privileged-gid", acct.name, f"{field}.gid",
                                f"{field}.gid {acct.gid} is the host group `{gname}` ({PRIVILEGED_GROUPS[gname]}): every "
                                "plugin of this account holds it", f"give {acct.name} a group of its own (an unused gid)"))
        entry = by_uid.get(acct.uid)
        name = entry.name if entry else None
        if entry is not None:
            home_inside = entry.home == acct.state_dir or entry.home.startswith(acct.state_dir.rstrip("/") + "/")
            if entry.shell not in NOLOGIN_SHELLS and not home_inside:
                out.append(SideDoor("warn", "login-user", acct.name, f"{field}.uid",
                                    f"uid {acct.uid} is the login user `{entry.name}` (shell {entry.shell}, home {entry.home}): "
                                    "whoever logs in as it owns everything its plugins hold, and its plugins own that user's files",
                                    f"give {acct.name} a dedicated system uid with no login (`ductile deploy render sysusers`)"))
            primary = by_gid.get(entry.gid)
            if primary is not None and primary.name in PRIVILEGED_GROUPS and entry.gid != acct.gid:
                out.append(SideDoor("warn", "privileged-group", acct.name, f"{field}.uid",
                                    f"uid {acct.uid} (`{entry.name}`) has the primary group `{primary.name}` in /etc/passwd "
                                    f"({PRIVILEGED_GROUPS[primary.name]}); plugins drop it, logins do not",
                                    f"usermod -g {acct.gid} {entry.name}"))
        member_of = [g for g in groups if name is not None and name in g.members]
        for g in member_of:
            if g.name in PRIVILEGED_GROUPS:
                out.append(SideDoor("warn", "privileged-group", acct.name, f"{field}.uid",
                                    f"`{name}` (uid {acct.uid}) is a member of the host group `{g.name}` "
                                    f"({PRIVILEGED_GROUPS[g.name]}); plugins drop it, logins and su do not",
                                    f"gpasswd -d {name} {g.name}"))
        if sudoers is not None:
            names = {g.name for g in member_of} | ({gname} if gname else set())
            gids = {g.gid for g in member_of} | {acct.gid}
            for rule in sudoers.rules:
                if any(_matches(u, name, acct.uid, names, gids) for u in rule.users):
                    out.append(SideDoor("warn", "sudo", acct.name, rule.source,
                                        f"a sudoers rule applies to {acct.name} (uid {acct.uid}): {rule.text}",
                                        f"remove or narrow the rule at {rule.source} (`sudo -l -U {name or '#' + str(acct.uid)}` shows it)"))
            for path in sudoers.unreadable:
                out.append(SideDoor("warn", "sudo-unchecked", acct.name, path,
                                    f"{path} exists but cannot be read here, so sudo rules for {acct.name} were not checked",
                                    "run `ductile account verify` as root to check them"))
    for res in path_dirs:
        for p in path_entry_problems(res, owners, "plugins"):
            out.append(SideDoor("refuse", "path-writable", None, p.path,
                                f"plugins' PATH: {p.message}: an account could plant a program every plugin may run",
                                p.fix))
    return out
