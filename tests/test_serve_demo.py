"""`make serve`'s path: ``ductile serve --demo`` builds a working demo on first run (token
printed once), serves it, and reuses it on the next run without printing the token."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from servehelp import ServeWorld, free_port, wait_for


def _serve_demo(demo: Path, port: int, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = demo.parent / f"out-{len(list(demo.parent.glob('out-*')))}", demo.parent / "err"
    env = {k: v for k, v in os.environ.items() if k not in ("DUCTILE_DEBUG", "NOTIFY_SOCKET")}
    env.update({"DUCTILE_LISTEN": f"127.0.0.1:{port}", "NO_COLOR": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "ductile", "serve", "--demo", "--demo-dir", str(demo), *args],
                            stdout=open(out, "wb"), stderr=open(err, "ab"), env=env, cwd="/")
    return proc, out, err


def test_demo_is_made_once_serves_echo_and_is_reused(tmp_path: Path) -> None:
    # a traversable parent, as accounts must reach the demo when it enforces (root)
    parent = Path(tempfile.mkdtemp(prefix="ductile-demo-", dir="/tmp"))
    os.chmod(parent, 0o711)
    demo = parent / "demo"
    port = free_port()
    world = ServeWorld(demo, port, "")
    try:
        proc, out, err = _serve_demo(demo, port)
        world.proc = proc
        wait_for("the demo to answer", lambda: _healthy(world, proc, err), log=lambda: err.read_text())
        token = (demo / "etc" / "secret" / "api-token").read_text().strip()
        banner = out.read_text()
        assert token in banner and "curl -s -X POST" in banner and f"127.0.0.1:{port}" in banner
        expected = "ENFORCING" if os.geteuid() == 0 else "UNCONFINED"
        assert expected in banner
        assert oct((demo / "etc").stat().st_mode & 0o777) == "0o700"
        assert oct((demo / "etc" / "secret" / "api-token").stat().st_mode & 0o777) == "0o600"
        assert not (demo / "etc" / "plugins").exists() and (demo / "plugins" / "echo" / "manifest.yaml").is_file()
        job = world.wait_job(world.trigger("echo", "poll", {"hello": "demo"}, token), token)
        assert job["status"] == "succeeded" and job["result"]["payload"] == {"hello": "demo"}
        if os.geteuid() == 0:
            assert job["account"] == "default" and job["uid"] >= 62100
        wait_for("the echo.done -> notify pipeline", lambda: any(
            j["status"] == "succeeded" for j in world.request("GET", "/jobs?plugin=notify", token=token)[1]["jobs"]),
            log=lambda: err.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert token not in err.read_text()

        proc, out, err = _serve_demo(demo, port)
        world.proc = proc
        wait_for("the reused demo to answer", lambda: _healthy(world, proc, err), log=lambda: err.read_text())
        second = out.read_text()
        assert "reused" in second and token not in second and "api-token" in second
        assert (demo / "etc" / "secret" / "api-token").read_text().strip() == token
        assert world.request("GET", "/plugins", token=token)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert re.search(r"\$\(cat .*api-token\)", second)
    finally:
        if world.proc is not None and world.proc.poll() is None:
            world.proc.kill()
        shutil.rmtree(parent, ignore_errors=True)


def _healthy(world: ServeWorld, proc: subprocess.Popen[bytes], err: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"demo serve exited {proc.returncode}:\n{err.read_text()}")
    try:
        return world.request("GET", "/healthz")[0] == 200
    except OSError:
        return False


@pytest.mark.privileged
def test_demo_as_a_plain_user_runs_unconfined_and_says_so(tmp_path: Path) -> None:
    """What a developer without root gets from `make serve` (emulated from root with setpriv)."""
    from wallworld import destroy, free_ids, require_root, World

    require_root()
    uid = free_ids(1)[0]
    parent = Path(tempfile.mkdtemp(prefix="ductile-demo-user-", dir="/tmp"))
    os.chmod(parent, 0o711)
    os.chown(parent, uid, uid)
    demo, port = parent / "demo", free_port()
    world = ServeWorld(demo, port, "")
    out, err = parent / "out", parent / "err"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1", "DUCTILE_LISTEN": f"127.0.0.1:{port}"}
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--",
           sys.executable, "-m", "ductile", "serve", "--demo", "--demo-dir", str(demo)]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd="/")
    world.proc = proc
    try:
        wait_for("the user's demo to answer", lambda: _healthy(world, proc, err), log=lambda: err.read_text())
        banner = out.read_text()
        assert "UNCONFINED" in banner and f"plugins run as you (uid {uid})" in banner
        token = re.search(r"^  token    (\S+)$", banner, re.MULTILINE).group(1)  # type: ignore[union-attr]
        job = world.wait_job(world.trigger("echo", "poll", {}, token), token)
        assert job["status"] == "succeeded" and job["account"] == "unconfined" and job["uid"] == uid
        assert '"posture": "unconfined"' in err.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        destroy(World(parent, uid, {}))
