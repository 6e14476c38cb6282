"""The host's side of the exec'd drop (see ``privsep.dropper``): find ``capsh`` or
``setpriv`` and judge it, and whether this gateway can drop and verify at all. Decided
once per process: the binary's chain is root's (or it is not used), so only root can
change the answer, and a gateway's capabilities and ``/proc`` mount do not change while
it runs."""

from __future__ import annotations

import functools
import os
import subprocess

from ductile.privsep import kernel
from ductile.privsep.dropper import TOOLS, HostDropper, PathFacts, judge_chain, missing_options


def chain_facts(path: str) -> list[PathFacts]:
    """(path, mode, owner) of ``/`` and every directory down to ``path`` itself, after
    resolving symlinks (what is judged is what is exec'd). Empty when it does not exist."""
    real = os.path.realpath(path)
    parts = [p for p in real.split("/") if p]
    facts: list[PathFacts] = []
    current = "/"
    try:
        st = os.lstat(current)
        facts.append((current, st.st_mode, st.st_uid))
        for part in parts:
            current = os.path.join(current, part)
            st = os.lstat(current)
            facts.append((current, st.st_mode, st.st_uid))
    except OSError:
        return []
    return facts


def help_text(path: str) -> str:
    """``<tool> --help``, run once per process as the gateway (nothing is dropped)."""
    try:
        proc = subprocess.run([path, "--help"], capture_output=True, timeout=10, cwd="/",
                              env={"PATH": "/usr/bin:/bin"}, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


@functools.cache
def host_dropper() -> HostDropper:
    """The first trusted tool, in ``TOOLS`` order, that knows every option the drop uses."""
    reasons = []
    for tool in TOOLS:
        for candidate in tool.paths:
            chain = chain_facts(candidate)
            why = judge_chain(chain)
            if why is None:
                missing = missing_options(tool, help_text(chain[-1][0]))
                if not missing:
                    return HostDropper(chain[-1][0], tool.kind, "")
                why = f"too old: no {', '.join(missing)}"
            reasons.append(f"{candidate}: {why}")
    return HostDropper(None, "", "; ".join(reasons))


@functools.cache
def can_drop() -> bool:
    return kernel.probe_capability()


@functools.cache
def needs_ambient() -> bool:
    """A non-root gateway's capabilities reach an exec'd program only as ambient ones."""
    return os.geteuid() != 0


@functools.cache
def status_readable() -> bool:
    """Can this process read another user's ``/proc/<pid>/status``? (PID 1 is root's in
    every PID namespace; ``hidepid=`` hides it from a non-root gateway.)"""
    return kernel.read_status(1) is not None


def forget() -> None:
    """Decide again (tests that change what the host offers)."""
    for fn in (host_dropper, can_drop, needs_ambient, status_readable):
        fn.cache_clear()
