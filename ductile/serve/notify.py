"""sd_notify(3) without a dependency: a datagram to ``$NOTIFY_SOCKET`` when systemd set one.

``Type=notify`` units learn READY=1 once the API listens and the workers run, STOPPING=1
when a drain begins, and STATUS= lines a person sees in ``systemctl status``. An address
starting with ``@`` is in the abstract namespace (a leading NUL byte). Failures are
ignored: telling systemd is a courtesy, never a reason to stop serving.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr or not (addr.startswith("/") or addr.startswith("@")):
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``READY=1``, ``STATUS=...``) as one message; True when it was sent."""
    addr = address(os.environ if env is None else env)
    if addr is None:
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message)
    except OSError:
        return False
    return True
