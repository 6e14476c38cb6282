"""The local control channel: a unix socket beside the state database on which the running
gateway answers questions, so commands ask the gateway instead of guessing from files.

    path     ``<state.path>.sock`` (state path resolved), created by ``serve``, mode 0600,
             owned by the gateway's uid, removed when it stops
    who      the kernel's peer credentials (SO_PEERCRED): the gateway's own uid or root.
             Anyone else gets one refusal line, even if the socket's mode were loosened.
    framing  one JSON object per line each way; a request of at most 64 KiB, sent within 5 s
    ops      ``status`` today; ``handlers`` is a plain mapping, so reload and breaker
             controls register the same way

Why a unix socket and not the HTTP API: the API speaks to bearer tokens over the network
and may be switched off (``api.enabled: false``); the operator on the host is
authenticated by the kernel (uid), needs no token, and must still reach the gateway.

AF_UNIX paths are limited to 107 bytes, and state directories nest deep (tests, staging
roots), so both ends address the socket as ``/proc/self/fd/<directory fd>/<name>``, which
the kernel resolves like any path. The socket is bound inside a private (0700) temporary
directory, made 0600, then renamed into place: there is no moment at which it exists
under its public name with a wider mode, and no process-wide umask is touched.

Leaf module: standard library only, imported by ``serve`` (server) and ``system``
(client), which never import each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ductile.errors import DuctileError

SUFFIX = ".sock"
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 4 * 1024 * 1024
IO_TIMEOUT = 5.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]
_log = logging.getLogger("ductile.control")


class ControlError(DuctileError):
    """The control channel could not be used; ``reason`` says why, for callers that decide
    what a missing gateway means (``status`` says "not running", others refuse)."""

    kind = "control"

    def __init__(self, message: str, *, where: str = "", fix: str = "", reason: str = "error") -> None:
        super().__init__(message, where=where, fix=fix)
        self.reason = reason  # absent | stale | denied | timeout | protocol | error | refused


def socket_path(state_path: str) -> str:
    """Where the gateway for ``state_path`` listens (beside ``<state.path>.lock``)."""
    return os.path.realpath(os.path.expanduser(state_path)) + SUFFIX


@contextlib.contextmanager
def _short_address(path: str) -> Iterator[str]:
    """``path`` as a short address through an open descriptor of its directory."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel recorded it at connect."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError(f"message larger than {limit} bytes")
    return data.split(b"\n", 1)[0]


def _reply(conn: socket.socket, body: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(body, default=str).encode() + b"\n")


class ControlServer:
    """The gateway's end. ``handlers`` map an op name to a function of the request object
    returning the result object; an exception becomes ``{"ok": false, "error": ...}``."""

    def __init__(self, path: str, handlers: Mapping[str, Handler], *, allowed_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.geteuid(), 0})
        self._sock: socket.socket | None = None
        self._ident: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def bind(self) -> None:
        """Create the socket under its public name, 0600, replacing a stale one."""
        directory = os.path.dirname(self.path)
        private = tempfile.mkdtemp(prefix=".ductile-ctl-", dir=directory)  # 0700
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _short_address(os.path.join(private, "s")) as address:
                sock.bind(address)
                os.chmod(address, 0o600)
                st = os.stat(address)
                with _short_address(self.path) as public:
                    os.rename(address, public)
            sock.listen(16)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(private, "s"))
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        self._sock = sock
        self._ident = (st.st_dev, st.st_ino)

    def start(self) -> None:
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and remove the socket, unless another process has replaced it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(IO_TIMEOUT + 2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ident is not None:
            with contextlib.suppress(OSError), _short_address(self.path) as public:
                st = os.lstat(public)
                if (st.st_dev, st.st_ino) == self._ident and stat.S_ISSOCK(st.st_mode):
                    os.unlink(public)
            self._ident = None

    # -- serving -----------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        """Answer one connection: check who is asking, read one request, reply once."""
        conn.settimeout(IO_TIMEOUT)
        try:
            uid = peer_uid(conn)
        except OSError:
            return
        try:
            raw = _read_line(conn, MAX_REQUEST)  # read before answering, so the reply is not lost to a reset
        except (ValueError, OSError) as err:
            _reply(conn, {"ok": False, "error": f"bad request: {err}", "fix": "send one JSON object per line"})
            return
        if uid not in self.allowed_uids:
            _log.warning("control channel: refused a connection from uid %d", uid)
            _reply(conn, {"ok": False, "error": f"uid {uid} may not use this gateway's control channel",
                          "fix": "run the command as the gateway user or root"})
            return
        try:
            request = json.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("a request is a JSON object with a string 'op'")
        except ValueError as err:
            _reply(conn, {"ok": False, "error": f"bad request: {err}", "fix": "send one JSON object per line"})
            return
        op = request["op"]
        handler = self.handlers.get(op)
        if handler is None:
            _reply(conn, {"ok": False, "error": f"unknown op {op!r}",
                          "fix": f"ops this gateway answers: {', '.join(sorted(self.handlers))}"})
            return
        try:
            result = handler(request)
        except DuctileError as err:
            _reply(conn, {"ok": False, "error": err.message, "fix": err.fix})
            return
        except Exception as err:  # noqa: BLE001 - a failing handler must not take the channel down
            _log.exception("control channel: op %s failed", op)
            _reply(conn, {"ok": False, "error": f"{type(err).__name__}: {err}", "fix": "see the gateway's log"})
            return
        _reply(conn, {"ok": True, "op": op, "result": result})


def ask(path: str, op: str, args: Mapping[str, Any] | None = None, *, timeout: float = IO_TIMEOUT) -> dict[str, Any]:
    """Send one request to the gateway listening at ``path``; its ``result``, or ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            with _short_address(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            raise ControlError("no gateway control socket", where=path, reason="absent",
                               fix="start the gateway (ductile serve, or systemctl start ductile)") from None
        except ConnectionRefusedError:
            raise ControlError("the control socket is left over from a gateway that is gone", where=path,
                               reason="stale", fix="start the gateway; it replaces the socket") from None
        except PermissionError:
            raise ControlError(f"uid {os.geteuid()} may not use the gateway's control socket", where=path,
                               reason="denied", fix="run the command as the gateway user or root") from None
        except TimeoutError:
            raise ControlError(f"the gateway did not accept within {timeout:g}s", where=path, reason="timeout",
                               fix="the gateway may be overloaded or stuck; see its log") from None
        try:
            sock.sendall(json.dumps({**(args or {}), "op": op}).encode() + b"\n")
            raw = _read_line(sock, MAX_RESPONSE)
        except TimeoutError:
            raise ControlError(f"the gateway did not answer {op!r} within {timeout:g}s", where=path,
                               reason="timeout", fix="the gateway may be overloaded or stuck; see its log") from None
        except (OSError, ValueError) as err:
            raise ControlError(f"the control channel broke: {err}", where=path, reason="error",
                               fix="see the gateway's log") from None
    finally:
        sock.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("the gateway's answer is not a JSON object", where=path, reason="protocol",
                           fix="check that the socket belongs to a ductile gateway of this version")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "refused"), where=path, reason="refused",
                           fix=str(reply.get("fix") or "see the gateway's log"))
    result = reply.get("result")
    return result if isinstance(result, dict) else {}
