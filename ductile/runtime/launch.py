"""The one place a process is started as an account: plugins (through the trampoline),
the kill helper, and ``account verify``'s probe and sitter all come through ``launch``.

Every process it starts:

* drops to the account with ``user=``, ``group=`` *and* ``extra_groups=[]`` (leaving out
  the last would keep the gateway's supplementary groups) -- or, for a plugin's trampoline,
  through an exec'd ``capsh`` or ``setpriv`` that does the same drop, so that ``Popen`` can
  ``vfork`` instead of copying the gateway (``privsep.dropper``: why, and what keeps it as
  safe);
* starts a **new session** (``setsid`` inside ``_posixsubprocess``, no Python between fork
  and exec): it has no controlling terminal, so it can neither open ``/dev/tty`` nor push
  keystrokes into the operator's shell with ``TIOCSTI``, and it cannot ``setpgid`` itself
  into the gateway's process group (that needs the same session);
* has only fds 0-2 open and umask 077.

Pids of live ``Popen`` objects are registered while ``_registry`` is held, so the orphan
reaper (``jobcontain.reap_orphans``) can never collect a child whose exit status a
``Popen`` is still waiting for (it would then report 0 for a process that died of a
signal).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from typing import IO, Any

from ductile.privsep import dropper

UMASK = 0o077
HELPER_ENV = {"PATH": "/usr/bin:/bin"}

_registry = threading.Lock()
_tracked: set[int] = set()


def drop_kwargs(uid: int | None, gid: int | None) -> dict[str, Any]:
    """Popen's drop arguments: all three or none (unconfined)."""
    if uid is None:
        return {}
    return {"user": uid, "group": gid, "extra_groups": []}


def launch(argv: Sequence[str], *, uid: int | None, gid: int | None, env: dict[str, str],
           stdin: int | IO[Any] | None = subprocess.PIPE, stdout: int | IO[Any] | None = subprocess.PIPE,
           stderr: int | IO[Any] | None = subprocess.PIPE, cwd: str | None = None,
           via: dropper.HostDropper | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` dropped to ``uid``/``gid`` (None: as the gateway) in a new session.
    ``via``: drop through that program instead of in the forked child; the caller has
    judged it (``dropper.choose``) and, in a cap-only gateway, raised the ambient set of
    the calling thread."""
    drop = drop_kwargs(uid, gid)
    if via is not None and uid is not None and gid is not None:
        argv, drop = dropper.argv(via, uid, gid, argv), {}
    with _registry:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by ductile, never a shell string from input
            list(argv), stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd, close_fds=True,
            start_new_session=True, umask=UMASK, **drop,
        )
        _tracked.add(proc.pid)
    return proc


def forget(proc: subprocess.Popen[bytes]) -> None:
    """The Popen has collected its child (or gave up on it): the reaper may take it."""
    with _registry:
        _tracked.discard(proc.pid)


def run_helper(argv: Sequence[str], *, uid: int | None, gid: int | None, timeout: float = 10.0) -> int | None:
    """Run a short helper (``/bin/kill ...``) as the account and wait for it. None when it
    could not be started or did not finish in time (it is killed then)."""
    try:
        proc = launch(argv, uid=uid, gid=gid, env=dict(HELPER_ENV), stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    except OSError:
        return None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            proc.kill()
        except OSError:  # a cap-only gateway cannot signal another uid; the reaper collects it later
            pass
        return None
    finally:
        forget(proc)


def registry() -> tuple[threading.Lock, set[int]]:
    """The lock and the set of pids owned by live Popen objects (for the reaper)."""
    return _registry, _tracked
