"""Reload a real serve: SIGHUP, `ductile system reload` and POST /system/reload, with a
valid change (a new token works, the old one is refused, a running job completes), an
invalid one (the running config is kept and the reason is said) and one that needs a
restart (refused). No timed assertions: every wait polls until a generous deadline."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import run_ductile
from servehelp import ECHO, WAITER, ServeWorld, make_serve_world, wait_for

OLD = "old-token-" + "a1" * 16
NEW = "new-token-" + "b2" * 16
RELOADER = "reload-token-" + "c3" * 16
HOOK_OLD = "hook-old-" + "d4" * 16
HOOK_NEW = "hook-new-" + "e5" * 16


def config(token_ref: str, port: str = "@PORT@", extra: str = "", hook_ref: str = "hook-old") -> str:
    return f"""\
    service: {{unconfined: true, max_workers: 2, shutdown_timeout: 10s}}
    plugins:
      echo: {{}}
      waiter: {{timeouts: {{poll: 120s}}}}
    api:
      listen: 127.0.0.1:{port}
      tokens:
        - {{name: ops, secret_ref: {token_ref}, scopes: ["*"]}}
        - {{name: reloader, secret_ref: api-reloader, scopes: ["system:rw"]}}
        - {{name: viewer, secret_ref: api-viewer, scopes: ["echo:ro"]}}
    webhooks:
      - {{path: /hooks/echo, plugin: echo, secret_ref: {hook_ref}}}
    {extra}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("reload"), config("api-old"), {"echo": ECHO, "waiter": WAITER},
                         secrets={"api-old": OLD, "api-new": NEW, "api-reloader": RELOADER, "api-viewer": "v" * 40,
                                  "hook-old": HOOK_OLD, "hook-new": HOOK_NEW})
    w.start()
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def rewrite(w: ServeWorld, body: str) -> None:
    w.config_body = body
    w.write_config()


def reloads(w: ServeWorld) -> dict:
    return w.request("GET", "/healthz")[1]["reloads"]


def test_sighup_swaps_tokens_and_a_running_job_finishes_on_the_old_runtime(world: ServeWorld, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = world.trigger("waiter", "poll", {"gate": str(gate)}, OLD)
    wait_for("the waiter to run", lambda: world.job(job_id, OLD)["status"] == "running", log=world.log)
    generation = reloads(world)["generation"]

    rewrite(world, config("api-new"))
    assert world.proc is not None
    world.proc.send_signal(signal.SIGHUP)
    wait_for("the reload", lambda: reloads(world)["generation"] == generation + 1, log=world.log)

    assert world.request("GET", "/plugins", token=NEW)[0] == 200
    status, body = world.request("GET", "/plugins", token=OLD)
    assert status == 401 and body["error"] == "unknown bearer token"
    assert world.proc.poll() is None  # SIGHUP no longer stops the gateway

    gate.write_text("go")
    done = world.wait_job(job_id, NEW)
    assert done["status"] == "succeeded" and done["result"] == {"gate": True}
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]  # never killed, never re-run
    last = reloads(world)["last"]
    assert last["reloaded"] is True and last["source"] == "signal"
    assert "reloaded" in world.log() and "reload requested (signal)" in world.log()


def test_an_invalid_config_keeps_the_running_one_and_says_why(world: ServeWorld) -> None:
    token = NEW if world.request("GET", "/plugins", token=NEW)[0] == 200 else OLD
    ref = "api-new" if token == NEW else "api-old"
    good = world.config_body
    generation = reloads(world)["generation"]
    # a key the schema does not know: SIGHUP, so the gateway itself reads it
    rewrite(world, config(ref, extra="bogus_key: 1"))
    try:
        assert world.proc is not None
        world.proc.send_signal(signal.SIGHUP)
        wait_for("the refused reload", lambda: (reloads(world)["last"] or {}).get("result") == "failed"
                 and "bogus_key" in reloads(world)["last"]["message"], log=world.log)
        assert reloads(world)["generation"] == generation
        assert world.request("GET", "/plugins", token=token)[0] == 200  # still the old runtime
        assert "reload refused, still running generation" in world.log()

        # a token whose secret is not in the vault: only the gateway can tell; the command says why
        rewrite(world, config("api-missing"))
        proc = run_ductile("system", "reload", "--config", str(world.etc))
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "not reloaded" in proc.stderr and "api-missing" in proc.stderr and "fix:" in proc.stderr
        assert world.request("GET", "/plugins", token=token)[0] == 200

        # the same answer over the API, with the reason
        status, body = world.request("POST", "/system/reload", token=RELOADER)
        assert status == 422 and "api-missing" in body["error"] and body["reloaded"] is False
    finally:
        rewrite(world, good)
    proc = run_ductile("system", "reload", "--config", str(world.etc))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "reloaded" in proc.stdout


def test_a_listen_change_needs_a_restart_and_is_refused(world: ServeWorld) -> None:
    token = NEW if world.request("GET", "/plugins", token=NEW)[0] == 200 else OLD
    good = world.config_body
    rewrite(world, config("api-new" if token == NEW else "api-old", port="1"))
    try:
        proc = run_ductile("system", "reload", "--config", str(world.etc), "--json")
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        report = json.loads(proc.stdout)
        assert report["restart_required"] is True and "api.listen" in report["message"]
        assert "restart" in report["fix"]
        assert world.request("GET", "/healthz")[0] == 200  # still on the old port
    finally:
        rewrite(world, good)


def test_post_system_reload_needs_system_rw(world: ServeWorld) -> None:
    assert world.request("POST", "/system/reload")[0] == 401
    status, body = world.request("POST", "/system/reload", token="v" * 40)
    assert status == 403 and "system:rw" in body["fix"]
    status, body = world.request("POST", "/system/reload", token=RELOADER)
    assert status == 200 and body["reloaded"] is True and body["source"] == "api:reloader"


def test_a_reload_re_resolves_webhook_keys(world: ServeWorld) -> None:
    from ductile.serve.signatures import sign

    body = b'{"n": 1}'
    good = world.config_body
    rewrite(world, good.replace("hook-old", "hook-new"))
    try:
        assert run_ductile("system", "reload", "--config", str(world.etc)).returncode == 0
        old = world.request("POST", "/hooks/echo", body, headers={"X-Hub-Signature-256": "sha256=" + sign(
            HOOK_OLD.encode(), body), "X-Request-Id": "r1"})
        new = world.request("POST", "/hooks/echo", body, headers={"X-Hub-Signature-256": "sha256=" + sign(
            HOOK_NEW.encode(), body), "X-Request-Id": "r2"})
        assert old[0] == 401 and new[0] == 202, (old, new)
    finally:
        rewrite(world, good)
        assert run_ductile("system", "reload", "--config", str(world.etc)).returncode == 0


def test_system_reload_without_a_gateway_says_so(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, "service: {unconfined: true}\napi: {enabled: false}\n")
    proc = run_ductile("system", "reload", "--config", str(w.etc))
    assert proc.returncode == 3 and "no gateway is running" in proc.stderr


def test_system_breaker_without_a_gateway_reads_and_resets_the_database(tmp_path: Path) -> None:
    from ductile.state import open_state
    from ductile.state.breakers import Breaker

    w = make_serve_world(tmp_path, "service: {unconfined: true}\napi: {enabled: false}\nplugins:\n"
                                   "  poller: {schedules: [{every: 1m}]}\n")
    with open_state(str(w.db)) as db:
        db.breakers.put(Breaker("poller", "open", 3, 1.0, 2.0, "boom"))
    shown = run_ductile("system", "breaker", "--config", str(w.etc), "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["from"].startswith("database") and report["breakers"][0]["state"] == "open"
    reset = run_ductile("system", "breaker", "poller", "--reset", "--config", str(w.etc))
    assert reset.returncode == 0 and "reset the breaker of poller" in reset.stdout, reset.stderr
    with open_state(str(w.db), create=False) as db:
        assert db.breakers.get("poller").state == "closed"  # type: ignore[union-attr]
    unknown = run_ductile("system", "breaker", "nope", "--config", str(w.etc))
    assert unknown.returncode == 2 and "no plugin nope" in unknown.stderr  # a usage error


def test_systemd_hears_reloading_with_the_monotonic_time_then_ready(tmp_path: Path) -> None:
    import os
    import socket as socketlib
    import time

    name = f"ductile-reload-test-{os.getpid()}"
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(60)
        w = make_serve_world(tmp_path, "service: {unconfined: true}\napi: {listen: \"127.0.0.1:@PORT@\"}\n")
        w.start(env={"NOTIFY_SOCKET": "@" + name})
        try:
            assert "READY=1" in listener.recv(4096).decode()
            before = time.monotonic_ns() // 1000
            assert w.proc is not None
            w.proc.send_signal(signal.SIGHUP)
            reloading = dict(line.split("=", 1) for line in listener.recv(4096).decode().splitlines())
            ready = listener.recv(4096).decode()
            after = time.monotonic_ns() // 1000
        finally:
            code = w.stop()
        assert code == 0
    assert reloading["RELOADING"] == "1" and before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert "READY=1" in ready and "generation 2" in ready
