"""serve as a real privilege-separated gateway: root, and cap-only (CAP_SETUID+CAP_SETGID via
setpriv, as systemd's AmbientCapabilities= sets it up). A scheduled job runs dropped to its
account, and the ledger shows the uid it ran as."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from servehelp import wait_for
from wallworld import PROBE_PLUGIN, destroy, make_world, require_root

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("gateway", ["root", "cap-only"])
def test_serve_drops_scheduled_jobs_to_the_account_and_the_ledger_shows_its_uid(gateway: str) -> None:
    require_root()
    w = make_world(0 if gateway == "root" else None, ["default", "untrusted"],
                   {"probe": "{run_as: default, schedules: [{every: 1s}]}"}, {"probe": PROBE_PLUGIN})
    uid = w.accounts["default"]
    cmd = w.command("serve")
    log = w.base / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd="/",
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1"})
    try:
        def succeeded() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()}")
            listed = w.run("job", "list", "--json", "--plugin", "probe", "--status", "succeeded")
            jobs = json.loads(listed.stdout) if listed.returncode == 0 else []
            return jobs[0] if jobs else None

        job = wait_for("a scheduled probe job to succeed", succeeded, log=log.read_text, interval=0.3)
        assert job["account"] == "default" and job["uid"] == uid
        full = w.run("job", "show", job["id"], "--json")  # a listing is summaries; the result is here
        assert full.returncode == 0, full.stderr
        job = json.loads(full.stdout)["job"]
        assert job["result"]["resuid"] == [uid, uid, uid] and job["result"]["groups"] == []
        assert job["result"]["caps"]["CapEff"] == "0000000000000000"
        shown = w.run("job", "show", job["id"])
        assert shown.returncode == 0, shown.stderr
        assert f"default (uid {uid})" in shown.stdout
        first = json.loads(log.read_text().splitlines()[0])
        assert first["msg"].startswith("posture=enforce") and first["gateway_uid"] == w.gateway_uid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        destroy(w)
    assert code == 0, log.read_text() if log.exists() else ""
