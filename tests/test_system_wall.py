"""The control channel is a new door in the wall; a dropped plugin tries it. serve runs as a
real enforcing gateway (root, and cap-only as systemd sets it up), with the state directory
0711 as in the shipped layout so the account can reach the socket's name: connecting must
still fail. ``system status`` asked by the gateway user (holding no capability) and by root
gets the gateway's own answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest

from servehelp import wait_for
from wallworld import PYTHON, destroy, make_world, require_root

from ductile.control import socket_path

pytestmark = pytest.mark.privileged

KNOCK = textwrap.dedent('''\
    #!/usr/bin/python3
    """Tries the gateway's control socket from inside a dropped plugin."""
    import errno, json, socket, sys
    req = json.load(sys.stdin)
    path = req["payload"]["socket"]
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(b'{"op": "status"}\\n')
        verdict = "CONNECTED: " + s.recv(4096).decode(errors="replace")[:200]
    except OSError as e:
        verdict = errno.errorcode.get(e.errno, str(e.errno))
    json.dump({"status": "ok", "result": {"verdict": verdict}}, sys.stdout)
''')


@pytest.mark.parametrize("gateway", ["root", "cap-only"])
def test_a_plugin_cannot_reach_the_control_channel_and_status_answers_the_operator(gateway: str) -> None:
    require_root()
    w = make_world(0 if gateway == "root" else None, ["default", "untrusted"], {"knock": "{run_as: default}"},
                   {"knock": KNOCK})
    os.chmod(w.base / "state", 0o711)  # as /var/lib/ductile: accounts pass through it
    cmd = w.command("serve")
    log = w.base / "serve.log"
    sock = socket_path(str(w.db))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd="/",
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1"})
    try:
        def answered() -> dict | None:  # type: ignore[type-arg]
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()}")
            st = w.run("system", "status", "--json", caps="")  # the gateway user, no capability at all
            return json.loads(st.stdout) if st.returncode == 0 else None

        report = wait_for("system status to get the gateway's answer", answered, log=log.read_text, interval=0.2)
        assert report["pid"] == proc.pid and report["posture"] == "enforce"
        assert report["gateway_uid"] == w.gateway_uid
        st = os.lstat(sock)
        assert (st.st_uid, st.st_mode & 0o777) == (w.gateway_uid, 0o600)

        knock = w.plugin_run("knock", {"socket": sock})  # the same drop serve's jobs get
        assert knock.returncode == 0, knock.stderr
        verdict = json.loads(knock.stdout)["outcome"]["result"]["verdict"]
        assert verdict == "EACCES", f"WALL BREACHED: a plugin reached the control channel: {verdict}"

        as_root = subprocess.run([PYTHON, "-m", "ductile", "system", "status", "--json", "--config", str(w.etc)],
                                 capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"})
        assert as_root.returncode == 0 and json.loads(as_root.stdout)["pid"] == proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        gone = not os.path.lexists(sock)
        destroy(w)
    assert code == 0, log.read_text() if log.exists() else ""
    assert gone, "the control socket outlived the gateway"
