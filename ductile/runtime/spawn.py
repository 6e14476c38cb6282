"""The spawn edge: execute a SpawnSpec. The only module that starts plugin processes.

One call = one process group: the request goes in on stdin, stdout is read up to its cap
(overflow kills the job), stderr keeps a 64 KiB tail, all three pipes are serviced from one
``selectors`` loop so no pipe can deadlock. A timeout sends SIGTERM to the group, waits
``kill_grace``, then SIGKILL. A ``cancel`` event set by the caller (serve's shutdown deadline)
kills the group at once, the same way.

Killing when the gateway is cap-only: without CAP_KILL a gateway cannot signal processes of
another uid (kill(2) needs a matching uid). Rather than widen the unit with CAP_KILL — which
would let the gateway signal *any* process on the host — the gateway falls back to a kill
helper spawned through the same drop as the plugin (``/bin/kill -SIG -- -PGID`` as the
account): it can signal exactly what the plugin itself could, nothing more. After a
timeout, if no other job of that account is running, the helper also runs ``kill -KILL -1``
as the account, which reaches grandchildren that escaped the process group (setsid,
double fork). Accounts are dedicated to ductile, so that sweep hits only its plugins.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ductile.errors import AccountDropFailed, SpawnFailed
from ductile.privsep.spawnspec import SpawnSpec

KILL_HELPER = "/bin/kill"
LINGER_AFTER_EXIT = 0.5  # seconds to keep draining pipes once the leader has exited
_CHUNK = 65536


@dataclass(frozen=True)
class RawResult:
    returncode: int               # negative: killed by that signal
    stdout: bytes = field(repr=False)
    stdout_truncated: bool
    stderr_tail: bytes = field(repr=False)
    timed_out: bool
    pid: int
    swept: bool = False           # an account-wide sweep ran after a kill
    cancelled: bool = False       # the caller's cancel event killed it (not the plugin's fault)


_running_lock = threading.Lock()
_running: Counter[int] = Counter()


def _drop_kwargs(spec: SpawnSpec) -> dict[str, Any]:
    if not spec.drops:
        return {}
    return {"user": spec.uid, "group": spec.gid, "extra_groups": list(spec.groups)}


def _helper(spec: SpawnSpec, args: list[str]) -> None:
    """Run /bin/kill dropped to the plugin's account (see module doc)."""
    try:
        subprocess.run([KILL_HELPER, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}, cwd="/", close_fds=True,
                       timeout=10, **_drop_kwargs(spec))
    except (OSError, subprocess.TimeoutExpired):
        pass


def signal_group(spec: SpawnSpec, pgid: int, sig: int) -> None:
    """Signal the plugin's process group, directly if permitted, else through the helper."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        if spec.drops:
            _helper(spec, ["-" + signal.Signals(sig).name.removeprefix("SIG"), "--", f"-{pgid}"])


def sweep_account(spec: SpawnSpec) -> bool:
    """Kill every remaining process of the account, if no other job of it is running."""
    if not spec.drops or spec.uid is None:
        return False
    with _running_lock:
        if _running[spec.uid] > 1:
            return False
        _helper(spec, ["-KILL", "--", "-1"])
    return True


def classify_start_error(spec: SpawnSpec, err: OSError) -> Exception:
    """Popen failed before the plugin ran: say which of drop / exec / cwd it was."""
    if isinstance(err, PermissionError) and err.filename is None and spec.drops:
        return AccountDropFailed(
            f"the kernel refused the drop to uid {spec.uid} gid {spec.gid}: {err.strerror}",
            where=f"accounts.{spec.account}",
            fix="give the gateway CAP_SETUID and CAP_SETGID (AmbientCapabilities= in its unit) or run it as root",
        )
    target = err.filename or spec.argv[0]
    if spec.popen_cwd is not None and err.filename == spec.popen_cwd:
        return SpawnFailed(f"cannot enter the plugin's working directory {target}: {err.strerror}", where=target,
                           fix="make it a directory the gateway can enter")
    if err.errno == errno.ENOENT:
        return SpawnFailed(f"{target} does not exist", where=spec.entrypoint, fix="check the plugin's entrypoint")
    if err.errno == errno.EACCES:
        return SpawnFailed(f"{target} is not executable by the gateway: {err.strerror}", where=spec.entrypoint,
                           fix="chmod a+rx the entrypoint and make its directories traversable")
    return SpawnFailed(f"could not start {target}: {err.strerror}", where=spec.entrypoint, fix="see the error")


def spawn(spec: SpawnSpec, request: bytes, *, on_start: Callable[[int], None] | None = None,
          cancel: threading.Event | None = None) -> RawResult:
    """Run one plugin process to completion (or kill) and return what it said.
    Setting ``cancel`` kills the process group (and sweeps the account) as a timeout would."""
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv is built by build_spawn_spec, never a shell
            list(spec.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=spec.env, cwd=spec.popen_cwd, close_fds=True, process_group=0, umask=spec.umask,
            **_drop_kwargs(spec),
        )
    except OSError as err:
        raise classify_start_error(spec, err) from None
    if spec.uid is not None:
        with _running_lock:
            _running[spec.uid] += 1
    try:
        if on_start is not None:
            on_start(proc.pid)
        return _communicate(spec, proc, request, cancel)
    finally:
        if spec.uid is not None:
            with _running_lock:
                _running[spec.uid] -= 1


def _communicate(spec: SpawnSpec, proc: subprocess.Popen[bytes], request: bytes,
                 cancel: threading.Event | None = None) -> RawResult:
    assert proc.stdin and proc.stdout and proc.stderr
    pgid = proc.pid
    sel = selectors.DefaultSelector()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(pipe.fileno(), False)
    pending = memoryview(request)
    if pending:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    out = bytearray()
    err_tail = bytearray()
    truncated = timed_out = cancelled = False
    start = time.monotonic()
    deadline = start + spec.timeout
    term_sent_at: float | None = None
    killed = False
    exited_at: float | None = None

    def kill_now() -> None:
        nonlocal killed
        if not killed:
            signal_group(spec, pgid, signal.SIGKILL)
            killed = True

    while sel.get_map():
        now = time.monotonic()
        if proc.poll() is not None and exited_at is None:
            exited_at = now
        if exited_at is not None and now - exited_at > LINGER_AFTER_EXIT:
            kill_now()  # grandchildren holding our pipes open
            break
        if cancel is not None and not cancelled and exited_at is None and cancel.is_set():
            cancelled = True
            kill_now()
        if not timed_out and exited_at is None and now >= deadline:
            timed_out = True
            signal_group(spec, pgid, signal.SIGTERM)
            term_sent_at = now
        if term_sent_at is not None and not killed and now - term_sent_at >= spec.kill_grace:
            kill_now()
        waits = [0.05]
        if not timed_out:
            waits.append(max(0.0, deadline - now))
        for key, _ in sel.select(timeout=min(waits)):
            if key.fileobj is proc.stdin:
                try:
                    n = os.write(proc.stdin.fileno(), pending[:_CHUNK])
                    pending = pending[n:]
                except BrokenPipeError:
                    pending = pending[:0]
                except BlockingIOError:
                    continue
                if not pending:
                    sel.unregister(proc.stdin)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(key.fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            if key.fileobj is proc.stdout:
                out += chunk
                if len(out) > spec.max_stdout:
                    del out[spec.max_stdout:]
                    truncated = True
                    kill_now()
                    sel.unregister(proc.stdout)
            else:
                err_tail += chunk
                if len(err_tail) > spec.stderr_tail:
                    del err_tail[: len(err_tail) - spec.stderr_tail]
        if killed and proc.poll() is not None:
            break
    sel.close()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass
    if timed_out or truncated or cancelled:
        kill_now()
    returncode = proc.wait()
    swept = sweep_account(spec) if (timed_out or truncated or cancelled) else False
    return RawResult(returncode, bytes(out), truncated, bytes(err_tail), timed_out, proc.pid, swept, cancelled)
