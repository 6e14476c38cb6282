"""Dropping through an exec'd ``capsh`` or ``setpriv``, so that a spawn can ``vfork`` (pure).

Why: CPython's ``subprocess`` uses ``vfork`` only when it is *not* asked to change the
uid, gid or groups (glibc's set*id calls would signal the parent's threads from a child
that shares its memory). With ``user=``/``group=``/``extra_groups=`` every job ``fork``s
the whole gateway: copying the page tables of a multi-threaded 45 MiB process and the
copy-on-write faults that follow, about 2 ms of CPU per job with the GIL held. Handing
the drop to a small program that does it after ``exec`` lets the gateway ``vfork``, for
one more ``exec``: side by side, serve/bare for a ``#!/bin/sh`` plugin went from 2.7-3.1
to 1.8-2.3 with ``setpriv`` and a further 8 % lower with ``capsh``.

Which program: ``capsh`` (libcap; Debian priority "important", part of libcap elsewhere)
first: it takes the ids as numbers only (``setgid``, ``setgroups``, ``setuid``; no name
service) and starts in half the time of ``setpriv``, whose NSS lookup loads modules.
``setpriv`` (util-linux) second. Either must list every option the drop passes in its
``--help`` (old versions lack ``--noamb``/``--ambient-caps``); with neither, the gateway
drops in the forked child as before.

What keeps that as safe as the in-process drop:

* **The binary is trusted like the gateway itself**: it runs with the gateway's
  capabilities for the few instructions before its drop, so it and every directory above
  it must be root's and writable by nobody else (``judge_chain``).
* **Its environment cannot steer it**: it is exec'd with the plugin's environment, so a
  job whose environment holds a name the dynamic loader or the C library would obey
  (``LD_PRELOAD``, ``GCONV_PATH``, ``LOCPATH``, ... — glibc's own list for privileged
  programs) keeps the in-process drop (``unsafe_env``). The allowlist never passes such a
  name; only ``service.plugin_env_passthrough`` could.
* **It leaves no capability behind**: a cap-only gateway hands it CAP_SETUID/CAP_SETGID as
  *ambient* capabilities, raised only in the short-lived thread that spawns (the gateway's
  other threads keep theirs cleared); the drop clears the inheritable and ambient sets
  (``--inh= --noamb``, ``--inh-caps=-all --ambient-caps=-all``) before it execs the
  trampoline, so the plugin starts with every set empty.
* **The drop is verified before the plugin's first instruction**: the gateway reads the
  waiting trampoline's ``/proc/<pid>/status`` and sends ``go`` only when every uid and gid
  is the account's, no supplementary group is left and every capability set is empty
  (``verify_drop``). ``setpriv`` needs it most: it reads ``--reuid=61001`` as a *user
  name* first (a directory entry named "61001" would win over the number). A gateway that
  cannot read its children's status (``/proc`` mounted ``hidepid=``) keeps the in-process
  drop.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ductile.privsep.caps import ProcStatus


@dataclass(frozen=True)
class Tool:
    kind: str
    paths: tuple[str, ...]
    needs: tuple[str, ...]   # options its --help must list


CAPSH = Tool("capsh", ("/usr/sbin/capsh", "/sbin/capsh"),
             ("--shell=", "--gid=", "--groups=", "--uid=", "--inh=", "--noamb"))
SETPRIV = Tool("setpriv", ("/usr/bin/setpriv", "/bin/setpriv"),
               ("--reuid", "--regid", "--clear-groups", "--inh-caps", "--ambient-caps"))
TOOLS = (CAPSH, SETPRIV)   # in order of preference


@dataclass(frozen=True)
class HostDropper:
    """What the host offers, decided once per process (``privsep.dropper_host``)."""

    path: str | None        # a trusted capsh or setpriv, or None
    kind: str               # the Tool's kind ("" when path is None)
    why_not: str            # "" when path is set


@dataclass(frozen=True)
class Choice:
    via: HostDropper | None   # None: drop in-process (fork)
    why: str


# glibc's unsecvars.h: what the loader and libc drop for a privileged (AT_SECURE) program.
# TMPDIR is on that list too, but the gateway sets it itself and neither dropper reads it.
UNSAFE_ENV = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH",
    "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR",
})
UNSAFE_ENV_PREFIXES = ("LD_", "MALLOC_")


def argv(via: HostDropper, uid: int, gid: int, command: Sequence[str]) -> list[str]:
    """The exec'd drop: real, effective and saved ids to the account, no supplementary
    groups, inheritable and ambient sets cleared, then ``command``."""
    assert via.path is not None
    if via.kind == CAPSH.kind:  # capsh execs --shell with the words after "--"
        return [via.path, f"--shell={command[0]}", f"--gid={gid}", "--groups=", f"--uid={uid}", "--inh=", "--noamb",
                "--", *command[1:]]
    return [via.path, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--ambient-caps=-all", "--", *command]


def unsafe_env(env: Mapping[str, str]) -> list[str]:
    """Names in ``env`` that a privileged exec must not see, sorted."""
    return sorted(k for k in env if k in UNSAFE_ENV or k.startswith(UNSAFE_ENV_PREFIXES))


PathFacts = tuple[str, int, int]  # (path, st_mode, st_uid), from / down to the binary itself


def judge_chain(chain: Sequence[PathFacts]) -> str | None:
    """Why the binary at the end of ``chain`` may not run with the gateway's capabilities,
    or None: every entry root's, none writable by group or others, the last a regular
    executable file without set-id bits. An empty chain is a missing binary."""
    if not chain:
        return "not found"
    for path, mode, owner in chain:
        if owner != 0:
            return f"{path} is owned by uid {owner}, not root"
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{path} is writable by its group or others (mode {stat.S_IMODE(mode):04o})"
    path, mode, _ = chain[-1]
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    if not mode & stat.S_IXUSR:
        return f"{path} is not executable"
    if mode & (stat.S_ISUID | stat.S_ISGID):
        return f"{path} is set-id"
    return None


def missing_options(tool: Tool, help_text: str) -> list[str]:
    """Options ``argv`` passes that this ``--help`` does not list."""
    return [opt for opt in tool.needs if opt not in help_text]


def choose(host: HostDropper, *, drops: bool, can_drop: bool, status_readable: bool,
           env: Mapping[str, str], executable: bool = True) -> Choice:
    """How one process is dropped. ``can_drop``: the gateway holds the capabilities (without
    them the in-process drop fails with the kernel's own error, which is clearer);
    ``status_readable``: the gateway can read another uid's ``/proc/<pid>/status``;
    ``executable``: the job's Landlock ruleset lets the binary be exec'd."""
    if not drops:
        return Choice(None, "not dropped")
    if host.path is None:
        return Choice(None, f"no dropper: {host.why_not}")
    if not can_drop:
        return Choice(None, "the gateway lacks CAP_SETUID/CAP_SETGID")
    if not status_readable:
        return Choice(None, "the drop could not be verified: /proc hides other users' processes")
    if not executable:
        return Choice(None, f"the Landlock ruleset does not let {host.path} be executed")
    names = unsafe_env(env)
    if names:
        return Choice(None, f"the environment holds {', '.join(names)}")
    return Choice(host, f"vfork + {host.kind}")


@dataclass(frozen=True)
class Mismatch:
    why: str
    identity: bool   # the ids or groups are wrong (a name won over a number), not the capabilities


def verify_drop(status: ProcStatus, uid: int, gid: int) -> Mismatch | None:
    """How the process described by ``status`` is not dropped to ``uid``/``gid``, or None."""
    if not status.uids or any(u != uid for u in status.uids):
        return Mismatch(f"it runs as uid {'/'.join(map(str, status.uids)) or '?'}, not {uid}", True)
    if not status.gids or any(g != gid for g in status.gids):
        return Mismatch(f"it runs as gid {'/'.join(map(str, status.gids)) or '?'}, not {gid}", True)
    if status.groups:
        return Mismatch(f"it kept supplementary groups {' '.join(map(str, status.groups))}", True)
    if not status.unprivileged():
        held = [n for n in ("CapInh", "CapPrm", "CapEff", "CapAmb") if status.caps.get(n, -1) != 0]
        return Mismatch(f"it holds capabilities ({', '.join(held)} not empty)", False)
    return None
