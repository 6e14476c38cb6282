"""The wall probe: run *as an account* (``python -I -S probe.py``), it tries what a hostile
plugin would try and reports what the kernel said. Standard library only; it must not
import ductile, because it runs with the account's view of the filesystem.

Request on stdin: {"deny": [{"label", "path"}], "writable": path, "exec": [{"label", "path"}],
"gateway_uid": int, "gateway_sid": int, "expect": {"uid", "gid"}}. Response on stdout:
{"checks": [...], "facts": {...}}. Every check states what was attempted; a check that could
not be attempted says so.

Containment: the probe starts a setsid'd double-fork escapee (its pid is in ``facts``) that
the gateway must kill when the probe's job ends, and tries the terminal: ``/dev/tty`` and
``TIOCSTI`` on its standard descriptors.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import termios
import time
from typing import Any

Check = dict[str, Any]


def open_fds() -> list[int]:
    """Open descriptors; the listing's own fd is closed by the time readlink runs."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        out.append(int(name))
    return out


def status_fields() -> dict[str, str]:
    out: dict[str, str] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def ename(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err.errno))


def check(label: str, path: str, expect: str, verdict: str, ok: bool | None, detail: str = "") -> Check:
    return {"label": label, "path": path, "expect": expect, "verdict": verdict, "ok": ok, "detail": detail}


def try_read(label: str, path: str) -> Check:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return check(label, path, "DENIED", "ABSENT", None, "does not exist; nothing to test")
        return check(label, path, "DENIED", "DENIED", True, "ENOENT")
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return check(label, path, "DENIED", "DENIED", True, ename(err))
        return check(label, path, "DENIED", "ERROR", None, f"{ename(err)}: {err.strerror}")
    return check(label, path, "DENIED", "READABLE", False, "the account could read it: WALL BREACHED")


def try_write(path: str) -> Check:
    probe = os.path.join(path, f".ductile-verify-{os.getpid()}")
    try:
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as err:
        return check("own state_dir", path, "WRITABLE", "NOT WRITABLE", False,
                     f"{ename(err)}: {err.strerror}")
    return check("own state_dir", path, "WRITABLE", "WRITABLE", True)


def try_setuid(label: str, uid: int) -> Check:
    try:
        os.setuid(uid)
    except OSError as err:
        return check(label, f"setuid({uid})", "REFUSED", "REFUSED", True, ename(err))
    return check(label, f"setuid({uid})", "REFUSED", "SUCCEEDED", False, "the account regained a privileged uid")


def interpreter_of(path: str) -> str | None:
    """The #! interpreter of a script (env-style resolved through PATH), or None for binaries."""
    try:
        with open(path, "rb") as fh:
            head = fh.readline(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    parts = head[2:].decode("utf-8", "replace").strip().split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        args = [p for p in parts[1:] if not p.startswith("-")]
        return shutil.which(args[0]) if args else parts[0]
    return parts[0]


def try_exec(label: str, path: str) -> list[Check]:
    out: list[Check] = []
    ok = os.access(path, os.X_OK) and os.path.isfile(path)
    out.append(check(label, path, "EXECUTABLE", "EXECUTABLE" if ok else "NOT EXECUTABLE", ok,
                     "" if ok else "the account cannot execute the entrypoint (or reach its directory)"))
    interp = interpreter_of(path) if ok else None
    if ok and interp is not None:
        iok = os.access(interp, os.X_OK)
        out.append(check(label + " interpreter", interp, "EXECUTABLE", "EXECUTABLE" if iok else "NOT EXECUTABLE", iok,
                         "" if iok else "the #! interpreter is not executable by the account"))
    elif ok and interp is None:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError:
            magic = b""
        if magic != b"\x7fELF":
            out.append(check(label + " interpreter", path, "EXECUTABLE", "UNKNOWN", None,
                             "no #! line and not an ELF binary"))
    return out


def try_session(gateway_sid: int | None) -> Check:
    sid, pid = os.getsid(0), os.getpid()
    ok = sid == pid and sid != gateway_sid
    return check("session", f"getsid={sid}", "NEW SESSION", "NEW SESSION" if ok else "GATEWAY'S SESSION", ok,
                 f"pid={pid} gateway sid={gateway_sid}")


def try_terminal() -> list[Check]:
    out = []
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        os.close(fd)
        out.append(check("controlling terminal", "/dev/tty", "NONE", "OPENED", False,
                         "the account could reach the operator's terminal"))
    except OSError as err:
        ok = err.errno == errno.ENXIO
        out.append(check("controlling terminal", "/dev/tty", "NONE", "NONE" if ok else "ERROR", ok if ok else None, ename(err)))
    injected = []
    for fd in (0, 1, 2):
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, b" ")
            injected.append(str(fd))
        except OSError:
            continue
    out.append(check("TIOCSTI", "fds 0,1,2", "REFUSED", "INJECTED" if injected else "REFUSED", not injected,
                     f"keystrokes pushed through fd {','.join(injected)}" if injected else ""))
    return out


def try_landlock(req: dict[str, Any]) -> list[Check]:
    """What the job's Landlock ruleset must refuse: a world-readable file outside it, a TCP
    connect to a port it does not list, a signal to a process of the same account outside
    the job. Where the kernel's ABI cannot enforce one, it is NOT ENFORCED (not checked)."""
    abi = int(req.get("abi") or 0)
    out: list[Check] = []

    def verdict(label: str, target: str, need: int, denied: bool | None, detail: str) -> Check:
        if abi < need:
            return check(label, target, "DENIED", "NOT ENFORCED", None, f"needs Landlock ABI {need}, kernel has {abi}")
        if denied is None:
            return check(label, target, "DENIED", "ERROR", None, detail)
        return check(label, target, "DENIED", "DENIED" if denied else "ALLOWED", denied, detail)

    path = req.get("read")
    if path:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            out.append(verdict("landlock read", path, 1, False, "world-readable file outside the allowlist was read"))
        except OSError as err:
            out.append(verdict("landlock read", path, 1, err.errno == errno.EACCES if err.errno != errno.ENOENT else None,
                               ename(err)))
    port = req.get("connect_port")
    if port:
        import socket

        s = socket.socket()
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            out.append(verdict("landlock connect", f"tcp 127.0.0.1:{port}", 4, False, "connected to an unlisted port"))
        except OSError as err:
            out.append(verdict("landlock connect", f"tcp 127.0.0.1:{port}", 4, err.errno == errno.EACCES, ename(err)))
        finally:
            s.close()
    pid = req.get("signal_pid")
    if pid:
        try:
            os.kill(pid, 0)
            out.append(verdict("landlock signal", f"pid {pid} (same account, another job)", 6, False, "signalled it"))
        except OSError as err:
            out.append(verdict("landlock signal", f"pid {pid} (same account, another job)", 6,
                               err.errno == errno.EPERM if err.errno != errno.ESRCH else None, ename(err)))
    if abi <= 0:
        out.append(check("landlock", "kernel", "ENFORCED", "ABSENT", None, "this kernel has no Landlock"))
    return out


def start_escapee() -> int | None:
    """A daemon the way a hostile plugin makes one: fork, setsid, fork, close stdio."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.close(r)
                for fd in (0, 1, 2):
                    os.close(fd)
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                time.sleep(120)
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 32)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data) if data else None


def main() -> None:
    req = json.load(sys.stdin)
    st = status_fields()
    checks = []
    for t in req.get("deny", []):
        checks.append(try_read(t["label"], t["path"]))
    if req.get("writable"):
        checks.append(try_write(req["writable"]))
    caps = {k: st.get(k, "?") for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
    zero = all(v == "0000000000000000" for v in caps.values())
    checks.append(check("capabilities", "CapInh/CapPrm/CapEff/CapAmb", "ZERO", "ZERO" if zero else "HELD", zero,
                        " ".join(f"{k}={v}" for k, v in caps.items())))
    exp = req.get("expect", {})
    resuid, resgid, groups = os.getresuid(), os.getresgid(), os.getgroups()
    ident_ok = resuid == (exp.get("uid"),) * 3 and resgid == (exp.get("gid"),) * 3 and set(groups) <= {exp.get("gid")}
    checks.append(check("identity", "resuid/resgid/groups", "ACCOUNT ONLY", "ACCOUNT ONLY" if ident_ok else "WRONG",
                        ident_ok, f"resuid={resuid} resgid={resgid} groups={groups}"))
    fds = sorted(open_fds())
    checks.append(check("open fds", "/proc/self/fd", "0,1,2", ",".join(map(str, fds)), fds == [0, 1, 2]))
    for t in req.get("exec", []):
        checks.extend(try_exec(t["label"], t["path"]))
    checks.append(try_setuid("setuid(0)", 0))
    gw = req.get("gateway_uid")
    if gw not in (None, 0):
        checks.append(try_setuid("setuid(gateway)", gw))
    checks.append(try_session(req.get("gateway_sid")))
    checks.extend(try_terminal())
    if "landlock" in req:
        checks.extend(try_landlock(req["landlock"]))
    try:
        with open("/proc/self/cgroup") as fh:
            cgroup = fh.read().strip()
    except OSError as err:
        cgroup = f"unreadable: {ename(err)}"
    facts = {"escapee": start_escapee(), "cgroup": cgroup, "resuid": resuid, "resgid": resgid, "groups": groups,
             "cwd": os.getcwd(), "no_new_privs": st.get("NoNewPrivs"), "env_keys": sorted(os.environ), "caps": caps}
    json.dump({"status": "ok", "result": {"checks": checks, "facts": facts}}, sys.stdout)


if __name__ == "__main__":
    main()
