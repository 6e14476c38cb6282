"""Read back what an installed systemd unit gives the gateway. Pure: text in, facts out.

``ductile deploy render unit`` writes the unit; this module reads one (and its drop-ins),
so ``doctor``, ``account explain`` and ``account verify`` can say what the gateway will
hold *under its unit* instead of judging the shell they happen to run in, and so
``--as-unit`` can re-run a command with the unit's user and capabilities.

Only the settings that decide the gateway's identity and privilege are read, with
systemd.exec(5) semantics for repeated assignments:

    User= / Group= / UMask= / WorkingDirectory= / NoNewPrivileges=   the last one wins
    SupplementaryGroups=, Environment=                                 merged; "" resets
    AmbientCapabilities=, CapabilityBoundingSet=                       merged (OR), a "~" line
                                                                       inverts and ANDs, "" resets
    ExecStart=                                                         "" resets; +/! run as root

A unit without ``CapabilityBoundingSet=`` leaves the bounding set alone (every capability).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# capabilities(7), as of Linux 6.x (cap_last_cap 40). Order is the kernel's bit order.
ALL_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
DROP_CAPS = frozenset({"CAP_SETUID", "CAP_SETGID"})
# systemd's PATH for system services (systemd.exec(5), "Environment variables in spawned processes").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class UnitFacts:
    """What a service unit gives the process it starts, as far as the wall cares."""

    name: str                              # ductile.service
    path: str                              # the unit file (drop-ins are in ``sources``)
    sources: tuple[str, ...]               # every file read, in order
    user: str = "root"                     # User= (a name or a number); root when unset
    group: str = ""                        # Group= ('' = the user's primary group)
    supplementary_groups: tuple[str, ...] = ()
    ambient: frozenset[str] = frozenset()
    bounding: frozenset[str] = frozenset(ALL_CAPS)
    no_new_privs: bool = False
    umask: int = 0o022
    working_directory: str = "/"
    exec_start: tuple[str, ...] = ()
    exec_as_root: bool = False             # ExecStart=+... or !...: credentials not applied
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def runs_as_root(self) -> bool:
        return self.exec_as_root or self.user in ("root", "0")

    @property
    def capabilities(self) -> frozenset[str]:
        """What the gateway holds in its effective set when it starts."""
        if self.runs_as_root:
            return self.bounding
        return self.ambient & self.bounding

    @property
    def can_drop(self) -> bool:
        """The boot gate's question, answered for this unit: root, or both drop capabilities."""
        return DROP_CAPS <= self.capabilities

    def describe(self) -> str:
        """``ductile.service (User=ductile, CAP_SETGID CAP_SETUID)``: who the gateway is there."""
        caps = " ".join(sorted(self.capabilities & DROP_CAPS)) if not self.runs_as_root else "root"
        return f"{self.name} (User={self.user}, {caps or 'no capabilities'})"

    @property
    def config_arg(self) -> str | None:
        """The ``--config`` value of ``ExecStart=… serve --config PATH`` (None if absent)."""
        return config_argument(self.exec_start)

    @property
    def program(self) -> tuple[str, ...]:
        """ExecStart up to the ``serve`` word: how this unit invokes the ductile CLI."""
        if "serve" not in self.exec_start:
            return ()
        return self.exec_start[:self.exec_start.index("serve")]


@dataclass
class _Acc:
    """Accumulates assignments in file order (drop-ins after the unit)."""

    values: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    ambient: set[str] = field(default_factory=set)
    bounding: set[str] = field(default_factory=lambda: set(ALL_CAPS))
    exec_start: str = ""


def parse_caps(value: str) -> tuple[bool, set[str]]:
    """``~CAP_A CAP_B`` -> (inverted, names); names are upper-cased, unknown ones kept."""
    value = value.strip()
    inverted = value.startswith("~")
    names = {n.upper() if n.upper().startswith("CAP_") else f"CAP_{n.upper()}" for n in value.lstrip("~").split()}
    return inverted, names


def _merge_caps(current: set[str], initial: frozenset[str], value: str) -> set[str]:
    """systemd's config_parse_capability_set: the first assignment replaces the initial set,
    later ones OR (or AND, when inverted) into it; the empty string resets to nothing."""
    if value.strip() == "":
        return set()
    inverted, names = parse_caps(value)
    assigned = set(ALL_CAPS) - names if inverted else names
    if current == initial:
        return assigned
    return current & assigned if inverted else current | assigned


def _logical_lines(text: str) -> Iterable[tuple[str, str, str]]:
    """(section, key, value) of every assignment; comments and continuations handled."""
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if sep:
            yield section, key.strip(), value.strip()


def _parse_env(value: str) -> list[tuple[str, str]]:
    out = []
    for word in shlex.split(value):
        k, sep, v = word.partition("=")
        if sep and k:
            out.append((k, v))
    return out


def parse_unit(name: str, files: Sequence[tuple[str, str]]) -> UnitFacts:
    """Facts of unit ``name`` from ``files`` = [(path, text)]: the unit, then its drop-ins."""
    acc = _Acc()
    for _, text in files:
        for section, key, value in _logical_lines(text):
            if section != "Service":
                continue
            if key in ("User", "Group", "UMask", "WorkingDirectory", "NoNewPrivileges"):
                acc.values[key] = value
            elif key == "SupplementaryGroups":
                acc.groups = [] if not value else acc.groups + value.split()
            elif key == "Environment":
                acc.env = [] if not value else acc.env + _parse_env(value)
            elif key == "AmbientCapabilities":
                acc.ambient = _merge_caps(acc.ambient, frozenset(), value)
            elif key == "CapabilityBoundingSet":
                acc.bounding = _merge_caps(acc.bounding, frozenset(ALL_CAPS), value)
            elif key == "ExecStart":
                acc.exec_start = value  # a service has one ExecStart; "" resets it
    prefix = ""
    cmd = acc.exec_start
    while cmd[:1] in ("-", "@", ":", "+", "!"):
        prefix += cmd[0]
        cmd = cmd[1:]
    try:
        argv = tuple(shlex.split(cmd))
    except ValueError:
        argv = ()
    umask_text = acc.values.get("UMask", "")
    try:
        umask = int(umask_text, 8) if umask_text else 0o022
    except ValueError:
        umask = 0o022
    wd = acc.values.get("WorkingDirectory", "").lstrip("-")
    return UnitFacts(
        name=name, path=files[0][0] if files else "", sources=tuple(p for p, _ in files),
        user=acc.values.get("User", "") or "root", group=acc.values.get("Group", ""),
        supplementary_groups=tuple(acc.groups), ambient=frozenset(acc.ambient),
        bounding=frozenset(acc.bounding),
        no_new_privs=acc.values.get("NoNewPrivileges", "").lower() in ("yes", "true", "on", "1"),
        umask=umask, working_directory=wd if wd.startswith("/") else "/",
        exec_start=argv, exec_as_root="+" in prefix or "!" in prefix, environment=tuple(acc.env),
    )


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config``/``-c`` in a ductile command line."""
    for i, word in enumerate(argv):
        if word in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


def runs_config(facts: UnitFacts, config_dir: str, config_file: str) -> bool:
    """Does this unit start ``ductile serve`` on this config (its directory or its file)?"""
    arg = facts.config_arg
    if arg is None or "serve" not in facts.exec_start:
        return False
    arg = posixpath.normpath(arg)
    return arg in (posixpath.normpath(config_dir), posixpath.normpath(config_file))
