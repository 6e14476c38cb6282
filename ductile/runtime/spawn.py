"""The spawn edge: execute a SpawnSpec. The only module that runs plugin processes.

One call = one job, contained from its first instruction to its last process:

  1. take the account's lock shared (``jobcontain``): every ductile process on the host now
     knows a job of this account runs, so nobody sweeps the account under it;
  2. cgroup mode: create the job's cgroup with its limits;
  3. start the trampoline (``launch``: dropped, new session, no tty; under Landlock when the
     spec carries a ruleset, from a short-lived thread that restricted itself first). The
     drop is done by an exec'd ``capsh`` or ``setpriv`` when ``dropper.choose`` allows it,
     so that the spawn can ``vfork``; a cap-only gateway then raises CAP_SETUID/CAP_SETGID
     into the ambient set of that same short-lived thread only;
  4. move it into the job's cgroup; wait for the trampoline's ready line and check from
     ``/proc/<pid>/status`` that it runs as the account with no group and no capability
     left (required after an exec'd drop: ``setpriv`` reads a numeric uid as a user name
     first); then write ``go\\n`` and the request — the plugin's first instruction runs
     inside the cgroup, as the account;
  5. service stdin/stdout/stderr from one ``selectors`` loop (stdout capped: overflow kills
     the job; stderr keeps a 64 KiB tail); a timeout sends SIGTERM to the process group,
     ``kill_grace`` later SIGKILL; a ``cancel`` event (serve's shutdown deadline) kills at
     once. The wait is bounded by the wall clock (timeout + kill_grace + a margin), never
     by the plugin's cooperation;
  6. end the job, whatever happened: ``cgroup.kill`` and remove the cgroup; or, in sweep
     mode, kill every process of the account if no other job of it runs anywhere
     (``LOCK_EX|LOCK_NB``), else the job's own session; then reap inherited orphans.

Killing when the gateway is cap-only: without CAP_KILL a gateway cannot signal processes of
another uid. Rather than widen the unit with CAP_KILL — which would let the gateway signal
*any* process on the host — it falls back to a kill helper started through the same drop as
the plugin (``/bin/kill -SIG -- -PGID`` as the account): it can signal exactly what the
plugin itself could, nothing more. ``cgroup.kill`` needs no signal permission at all.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ductile.errors import AccountDropFailed, SpawnFailed
from ductile.privsep import cgroup, dropper, dropper_host, kernel, landlock_linux
from ductile.privsep.caps import parse_status
from ductile.privsep.landlock import EXECUTE
from ductile.privsep.spawnspec import TRAMPOLINE_READY, SpawnSpec
from ductile.privsep.spawnthread import in_throwaway_thread
from ductile.runtime import jobcontain
from ductile.runtime.launch import forget, launch, run_helper

LINGER_AFTER_EXIT = 0.5  # seconds to keep draining pipes once the leader has exited
KILL_MARGIN = 5.0        # seconds past timeout + kill_grace before the gateway stops waiting
READY_SLICE = 0.05       # seconds between looks at the cancel event while the trampoline starts
HANDSHAKE = b"go\n"
_CHUNK = 65536


@dataclass(frozen=True)
class RawResult:
    returncode: int               # negative: killed by that signal
    stdout: bytes = field(repr=False)
    stdout_truncated: bool
    stderr_tail: bytes = field(repr=False)
    timed_out: bool
    pid: int
    swept: bool = False           # an account-wide sweep ran at the end of the job
    cancelled: bool = False       # the caller's cancel event killed it (not the plugin's fault)
    leftovers: int = 0            # processes still alive when the job ended, killed then
    oom_killed: bool = False      # the job's cgroup hit memory.max
    abandoned: bool = False       # the leader outlived every kill and the wall-clock bound


def classify_start_error(spec: SpawnSpec, err: OSError) -> Exception:
    """Popen failed before the trampoline ran: a refused drop, or no /bin/sh."""
    if isinstance(err, PermissionError) and err.filename is None and spec.drops:
        return AccountDropFailed(
            f"the kernel refused the drop to uid {spec.uid} gid {spec.gid}: {err.strerror}",
            where=f"accounts.{spec.account}",
            fix="give the gateway CAP_SETUID and CAP_SETGID (AmbientCapabilities= in its unit) or run it as root",
        )
    target = err.filename or spec.argv[0]
    if err.errno == errno.ENOENT:
        return SpawnFailed(f"{target} does not exist", where=str(target), fix="install a POSIX shell at /bin/sh")
    return SpawnFailed(f"could not start {target}: {err.strerror}", where=spec.entrypoint, fix="see the error")


def signal_group(spec: SpawnSpec, pgid: int, sig: int) -> None:
    """Signal the plugin's process group, directly if permitted, else through the helper."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        if spec.drops:
            run_helper([jobcontain.KILL_HELPER, "-" + signal.Signals(sig).name.removeprefix("SIG"), "--", f"-{pgid}"],
                       uid=spec.uid, gid=spec.gid)


def drop_choice(spec: SpawnSpec) -> dropper.Choice:
    """How this job's trampoline is dropped (``privsep.dropper``)."""
    host = dropper_host.host_dropper()
    ruleset = spec.confinement.landlock
    return dropper.choose(host, drops=spec.drops, can_drop=dropper_host.can_drop(),
                          status_readable=dropper_host.status_readable(), env=spec.env,
                          executable=ruleset is None or host.path is None or ruleset.covers(host.path, EXECUTE))


def _start(spec: SpawnSpec, via: dropper.HostDropper | None) -> subprocess.Popen[bytes]:
    ruleset = spec.confinement.landlock
    prepare: list[Callable[[], None]] = []
    if ruleset is not None:
        prepare.append(lambda: landlock_linux.restrict_this_thread(ruleset))
    if via is not None and dropper_host.needs_ambient():
        prepare.append(kernel.raise_drop_ambient)

    def start() -> subprocess.Popen[bytes]:
        return launch(spec.argv, uid=spec.uid, gid=spec.gid, env=spec.env, via=via)

    if not prepare:
        return start()
    try:
        return in_throwaway_thread(prepare, start)
    except landlock_linux.LandlockError as err:
        raise SpawnFailed(f"the Landlock allowlist could not be applied: {err.strerror}", where=spec.entrypoint,
                          fix="check plugins.<name>.filesystem (every path must exist); `ductile doctor` lists them") from None


def _await_ready(spec: SpawnSpec, proc: subprocess.Popen[bytes], via: dropper.HostDropper | None,
                 cancel: threading.Event | None) -> bytes | None:
    """Wait (at most the job's timeout) for the trampoline's ready line, then check the drop.
    Returns what else it wrote to stderr, for the job's stderr tail; None when ``cancel``
    was set first (nothing ran). Raises when the process is not the account's. Either way
    the trampoline exits at the end of the job without running the plugin (its stdin
    closes before "go")."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + spec.timeout
    seen = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while TRAMPOLINE_READY not in seen:
        if cancel is not None and cancel.is_set():
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise SpawnFailed(f"the trampoline did not start within {spec.timeout:g}s", where=spec.entrypoint,
                              fix="the host is overloaded, or /bin/sh hangs at start-up")
        if not poller.poll(min(left, READY_SLICE) * 1000):
            continue
        chunk = os.read(fd, _CHUNK)
        if not chunk:  # it ended before the trampoline ran: the dropper refused, or sh did not start
            if via is not None:
                proc.wait(timeout=KILL_MARGIN)
                said = bytes(seen).decode("utf-8", "replace").strip().splitlines()
                raise AccountDropFailed(
                    f"{via.kind} could not drop to uid {spec.uid} gid {spec.gid}: {said[-1] if said else 'no message'}",
                    where=f"accounts.{spec.account}",
                    fix="give the gateway CAP_SETUID and CAP_SETGID (AmbientCapabilities= in its unit) or run it as root")
            return bytes(seen)
        seen += chunk
        del seen[:-spec.stderr_tail]
    at = seen.index(TRAMPOLINE_READY)
    rest = bytes(seen[:at] + seen[at + len(TRAMPOLINE_READY):])
    if spec.drops:
        _verify_drop(spec, proc.pid, required=via is not None)
    return rest


def _verify_drop(spec: SpawnSpec, pid: int, *, required: bool) -> None:
    assert spec.uid is not None and spec.gid is not None
    text = kernel.read_status(pid)
    if text is None:
        if not required:  # /proc hides it; the drop was done in the child by subprocess itself
            return
        mismatch: dropper.Mismatch | None = dropper.Mismatch(f"/proc/{pid}/status cannot be read", False)
    else:
        try:
            mismatch = dropper.verify_drop(parse_status(text), spec.uid, spec.gid)
        except ValueError as err:
            mismatch = dropper.Mismatch(str(err), False)
    if mismatch is None:
        return
    if mismatch.identity:
        fix = ("check that no user or group in NSS is named after the account's numeric uid or gid "
               f"(`getent passwd {spec.uid}`); `ductile account verify` shows the drop")
    else:
        fix = ("the drop left privileges behind: `ductile doctor` names the program that dropped it; "
               "report it with its version")
    raise AccountDropFailed(f"the job's process is not dropped to account {spec.account}: {mismatch.why}; it was "
                            "stopped before the plugin ran", where=f"accounts.{spec.account}", fix=fix)


def spawn(spec: SpawnSpec, request: bytes, *, on_start: Callable[[int], None] | None = None,
          cancel: threading.Event | None = None) -> RawResult:
    """Run one plugin process to completion (or kill) and return what it said.
    Setting ``cancel`` kills the job as a timeout would, at once."""
    conf = spec.confinement
    lock: jobcontain.AccountLock | None = None
    job_cg: cgroup.JobCgroup | None = None
    proc: subprocess.Popen[bytes] | None = None
    raw: RawResult | None = None
    try:
        if conf.lock_path is not None:
            try:
                lock = jobcontain.AccountLock(conf.lock_path)
            except OSError as err:
                raise SpawnFailed(f"cannot open the account lock {conf.lock_path}: {err.strerror}",
                                  where=conf.lock_path, fix="the state directory must be writable by the gateway") from None
            lock.hold_shared()
        if conf.cgroup_parent is not None:
            try:
                job_cg = cgroup.new_job(conf.cgroup_parent, conf.cgroup_files)
            except OSError as err:
                raise SpawnFailed(f"cannot create the job's cgroup under {conf.cgroup_parent}: {err.strerror}",
                                  where=conf.cgroup_parent, fix="check the cgroup subtree (ductile doctor)") from None
        via = drop_choice(spec).via
        try:
            proc = _start(spec, via)
        except OSError as err:
            raise classify_start_error(spec, err) from None
        if job_cg is not None:
            try:
                job_cg.place(proc.pid)
            except OSError as err:  # the plugin has not run: it is still waiting for "go"
                raise SpawnFailed(f"cannot move the job into its cgroup {job_cg.path}: {err.strerror}",
                                  where=job_cg.path, fix="the gateway must be able to write cgroup.procs of its "
                                  "subtree (systemd Delegate=yes)") from None
        early_stderr = _await_ready(spec, proc, via, cancel)
        if early_stderr is None:  # cancelled before "go": the plugin never ran
            raw = RawResult(-signal.SIGKILL, b"", False, b"", False, proc.pid, cancelled=True)
        else:
            if on_start is not None:
                on_start(proc.pid)
            raw = _communicate(spec, proc, HANDSHAKE + request, cancel, job_cg, early_stderr)
    finally:
        ended = _end_job(spec, proc, job_cg, lock)
    assert raw is not None
    return RawResult(raw.returncode, raw.stdout, raw.stdout_truncated, raw.stderr_tail, raw.timed_out, raw.pid,
                     ended.swept, raw.cancelled, ended.leftovers, ended.oom, raw.abandoned)


@dataclass(frozen=True)
class _Ended:
    swept: bool = False
    leftovers: int = 0
    oom: bool = False


def _end_job(spec: SpawnSpec, proc: subprocess.Popen[bytes] | None, job_cg: cgroup.JobCgroup | None,
             lock: jobcontain.AccountLock | None) -> _Ended:
    """Every process the job created dies here (success, failure, timeout, cancel)."""
    ended = _Ended()
    try:
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:  # a spawn that failed before "go": the trampoline exits without running the plugin
                proc.stdin.close()
            except OSError:
                pass
        if job_cg is not None:
            oom = job_cg.oom_killed()
            ended = _Ended(False, job_cg.end(), oom)
        elif proc is not None:
            _collect(proc)  # the leader first: what remains is the job's leftovers
            swept = None
            if spec.drops and lock is not None:
                assert spec.uid is not None and spec.gid is not None
                swept = jobcontain.end_of_job_sweep(lock, spec.uid, spec.gid)
            if swept is None:  # another job of the account runs (or unconfined): this job's session
                ended = _Ended(False, jobcontain.kill_session(proc.pid, spec.uid, spec.gid))
            else:
                ended = _Ended(swept)
        if proc is not None:
            _collect(proc)
    finally:
        if lock is not None:
            lock.close()
        jobcontain.reap_orphans()
    return ended


def _collect(proc: subprocess.Popen[bytes]) -> None:
    """Reap the leader if it is gone; a leader that outlived every kill is left to the
    orphan reaper (``forget``) rather than blocking the gateway."""
    try:
        proc.wait(timeout=KILL_MARGIN)
    except subprocess.TimeoutExpired:
        pass
    finally:
        forget(proc)


def _communicate(spec: SpawnSpec, proc: subprocess.Popen[bytes], request: bytes, cancel: threading.Event | None,
                 job_cg: cgroup.JobCgroup | None, early_stderr: bytes = b"") -> RawResult:
    assert proc.stdin and proc.stdout and proc.stderr
    pgid = proc.pid
    sel = selectors.DefaultSelector()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        os.set_blocking(pipe.fileno(), False)
    pending = memoryview(request)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    out = bytearray()
    err_tail = bytearray(early_stderr[-spec.stderr_tail:])
    truncated = timed_out = cancelled = abandoned = False
    start = time.monotonic()
    deadline = start + spec.timeout
    hard_deadline = deadline + spec.kill_grace + KILL_MARGIN
    term_sent_at: float | None = None
    killed = False
    exited_at: float | None = None

    def kill_now() -> None:
        nonlocal killed
        if job_cg is not None:
            job_cg.kill()
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
        if exited_at is None and now >= hard_deadline:
            timed_out, abandoned = not cancelled, True  # every kill failed: stop waiting, end the job
            kill_now()
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
    try:
        returncode = proc.wait(timeout=KILL_MARGIN)
    except subprocess.TimeoutExpired:
        abandoned = True
        returncode = -signal.SIGKILL
    return RawResult(returncode, bytes(out), truncated, bytes(err_tail), timed_out, proc.pid, False, cancelled,
                     abandoned=abandoned)
