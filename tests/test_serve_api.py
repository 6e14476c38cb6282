"""serve end to end over loopback HTTP: triggers, schedules, pipelines, webhooks, body limits,
scopes, and what never reaches the log."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_ductile
from servehelp import ECHO, ServeWorld, make_serve_world, wait_for

from ductile.serve.signatures import sign

OPS = "ops-token-" + "a1" * 16
RO = "ro-token-" + "b2" * 16
HOOK_KEY = "hook-key-" + "c3" * 16

CONFIG = """\
    service: {unconfined: true, max_workers: 2, shutdown_timeout: 5s}
    plugins:
      echo:
        retry: {max_attempts: 1}
      notify: {}
      ticker:
        schedules: [{every: 1s, command: poll, payload: {from: schedule}}]
    pipelines:
      - {name: tell, on: echo.*, steps: [{uses: notify}]}
    api:
      listen: 127.0.0.1:@PORT@
      max_body: 2KiB
      tokens:
        - {name: ops, secret_ref: api-ops, scopes: ["*"]}
        - {name: viewer, secret_ref: api-ro, scopes: ["echo:ro"]}
    webhooks:
      - {path: /hooks/echo, plugin: echo, secret_ref: echo-hook, max_body: 1KiB}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("api"), CONFIG, {"echo": ECHO, "notify": ECHO, "ticker": ECHO},
                         secrets={"api-ops": OPS, "api-ro": RO, "echo-hook": HOOK_KEY})
    w.start()
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def test_healthz_needs_no_token_and_tells_no_secrets(world: ServeWorld) -> None:
    status, body = world.request("GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok" and body["posture"] == "unconfined"
    assert isinstance(body["queue_depth"], int) and body["uptime_seconds"] >= 0
    text = json.dumps(body)
    assert str(world.base) not in text and OPS not in text


def test_trigger_runs_the_plugin_and_records_its_result(world: ServeWorld) -> None:
    job_id = world.trigger("echo", "poll", {"hello": "world"}, OPS)
    job = world.wait_job(job_id, OPS)
    assert job["status"] == "succeeded", job
    assert job["result"]["payload"] == {"hello": "world"}
    assert job["attempts"][0]["outcome"] == "succeeded"
    assert [e["type"] for e in job["events"]] == ["echo.done"]


def test_a_pipeline_hands_the_event_to_the_downstream_handle_job(world: ServeWorld) -> None:
    job_id = world.trigger("echo", "poll", {"n": 7}, OPS)
    world.wait_job(job_id, OPS)

    def downstream() -> dict | None:
        _, body = world.request("GET", "/jobs?plugin=notify&limit=200", token=OPS)
        for j in body["jobs"]:
            if j["parent_job_id"] == job_id and j["status"] == "succeeded":
                return j
        return None

    child = world.job(wait_for("the notify job started by echo.done", downstream, log=world.log)["id"], OPS)
    assert child["command"] == "handle" and child["event_depth"] == 1
    assert child["payload"] == {"said": {"n": 7}}  # read from the event, where it is stored once
    event = child["result"]["event"]
    assert event["type"] == "echo.done" and event["payload"] == {"said": {"n": 7}}
    assert event["source_job_id"] == job_id and event["pipeline"] == "tell"


def test_a_schedule_fires(world: ServeWorld) -> None:
    def fired() -> list | None:
        _, body = world.request("GET", "/jobs?plugin=ticker&status=succeeded", token=OPS)
        return body["jobs"] or None

    jobs = wait_for("a scheduled ticker job to succeed", fired, log=world.log)
    full = world.job(jobs[0]["id"], OPS)
    assert full["payload"] == {"from": "schedule"} and jobs[0]["dedupe_key"].startswith("schedule:ticker#0")
    assert jobs[0]["trigger"] == "schedule" and full["authority"] == {"trigger": "schedule", "scopes": None}


@pytest.mark.parametrize("header", ["none", "wrong", "garbage", "other-body"])
def test_webhook_with_a_bad_signature_is_401_and_queues_nothing(world: ServeWorld, header: str) -> None:
    body = json.dumps({"attack": header}).encode()
    headers = {"none": {}, "wrong": {"X-Hub-Signature-256": "sha256=" + "0" * 64},
               "garbage": {"X-Hub-Signature-256": "sha256=zz"},
               "other-body": {"X-Hub-Signature-256": "sha256=" + sign(HOOK_KEY.encode(), b"{}")}}[header]
    before = world.request("GET", "/jobs?plugin=echo&limit=1000", token=OPS)[1]["jobs"]
    status, answer = world.request("POST", "/hooks/echo", body, headers=headers)
    assert status == 401, answer
    assert set(answer) == {"error", "fix"}
    after = world.request("GET", "/jobs?plugin=echo&limit=1000", token=OPS)[1]["jobs"]
    assert len(after) == len(before)
    assert not any(world.job(j["id"], OPS)["payload"] == {"attack": header} for j in after)


@pytest.mark.parametrize("form", ["github", "bare"])
def test_webhook_with_a_good_signature_queues_a_handle_job(world: ServeWorld, form: str) -> None:
    body = b'{"action":  "opened", "n": 1, "form": "%s"}' % form.encode()  # odd spacing: the MAC is over the raw bytes
    sig = sign(HOOK_KEY.encode(), body)
    status, answer = world.request("POST", "/hooks/echo", body,
                                   headers={"X-Hub-Signature-256": f"sha256={sig}" if form == "github" else sig.upper()})
    assert status == 202, answer
    job = world.wait_job(answer["job_id"], OPS)
    assert job["command"] == "handle" and job["status"] == "succeeded"
    assert job["result"]["event"]["type"] == "webhook"
    assert job["result"]["event"]["payload"] == {"action": "opened", "n": 1, "form": form}


def test_webhook_body_that_is_not_json_arrives_raw(world: ServeWorld) -> None:
    body = b"a=1&b=2"
    status, answer = world.request("POST", "/hooks/echo", body, headers={"X-Hub-Signature-256": sign(HOOK_KEY.encode(), body)})
    assert status == 202
    assert world.wait_job(answer["job_id"], OPS)["result"]["event"]["payload"] == {"raw": "a=1&b=2"}


def test_oversized_bodies_are_413(world: ServeWorld) -> None:
    big = {"blob": "x" * 4096}
    status, answer = world.request("POST", "/plugin/echo/poll", big, token=OPS)
    assert status == 413 and "max_body" in answer["error"]
    status, _ = world.request("POST", "/hooks/echo", b"x" * 2048, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert status == 413


def test_body_limit_holds_without_content_length(world: ServeWorld) -> None:
    """A chunked body has no Content-Length to trust: the limit is enforced as it streams."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=30)
    conn.putrequest("POST", "/plugin/echo/poll")
    conn.putheader("Authorization", f"Bearer {OPS}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(8):
            chunk = b"x" * 1024
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may hang up as soon as the limit is passed
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


@pytest.mark.parametrize("body,needle", [(b"[1, 2]", "JSON object"), (b"{nope", "not JSON"), (b'"text"', "JSON object"),
                                         (b"\xff\xfe", "UTF-8")])
def test_a_body_that_is_not_a_json_object_is_400(world: ServeWorld, body: bytes, needle: str) -> None:
    status, answer = world.request("POST", "/plugin/echo/poll", body, token=OPS)
    assert status == 400 and needle in answer["error"] and answer["fix"]


def test_tokens_and_scopes(world: ServeWorld) -> None:
    assert world.request("GET", "/plugins")[0] == 401
    assert world.request("GET", "/plugins", token="not-a-token")[0] == 401
    assert world.request("GET", "/jobs", headers={"Authorization": f"Basic {OPS}"})[0] == 401
    status, body = world.request("GET", "/plugins", token=RO)
    assert status == 200 and [p["name"] for p in body["plugins"]] == ["echo"]
    assert {c["name"]: c["allowed"] for c in body["plugins"][0]["commands"]} == {"poll": True, "handle": True,
                                                                                 "write": False}
    assert world.request("POST", "/plugin/echo/write", {}, token=RO)[0] == 403
    assert world.request("POST", "/plugin/notify/poll", {}, token=RO)[0] == 403
    assert world.request("GET", "/jobs?plugin=notify", token=RO)[0] == 403
    ro_job = world.trigger("echo", "poll", {}, RO)
    assert world.job(ro_job, RO)["plugin"] == "echo"
    notify_jobs = world.request("GET", "/jobs?plugin=notify&limit=5", token=OPS)[1]["jobs"]
    if notify_jobs:
        assert world.request("GET", f"/job/{notify_jobs[0]['id']}", token=RO)[0] == 403
    _, listed = world.request("GET", "/jobs?limit=1000", token=RO)
    assert {j["plugin"] for j in listed["jobs"]} == {"echo"}


def test_unknown_things_are_404_with_a_fix(world: ServeWorld) -> None:
    for path in ("/plugin/ghost/poll", "/plugin/echo/nope"):
        status, body = world.request("POST", path, {}, token=OPS)
        assert status == 404 and body["fix"], body
    assert world.request("GET", "/job/00000000-0000-0000-0000-000000000000", token=OPS)[0] == 404
    assert world.request("GET", "/nowhere")[0] == 404
    assert world.request("GET", "/jobs?status=weird", token=OPS)[0] == 400


def test_job_show_reads_what_serve_wrote(world: ServeWorld) -> None:
    job_id = world.trigger("echo", "poll", {"via": "cli"}, OPS)
    world.wait_job(job_id, OPS)
    proc = run_ductile("job", "show", job_id, "--json", "--config", str(world.etc))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job"]["result"]["payload"] == {"via": "cli"}


def test_a_second_gateway_on_the_same_database_refuses_in_one_line(world: ServeWorld) -> None:
    proc = run_ductile("serve", "--config", str(world.etc), timeout=60)
    assert_one_line_error(proc, "another ductile serve is already running", ".lock")


def test_token_values_never_reach_the_log(world: ServeWorld) -> None:
    world.request("GET", "/plugins", token=OPS + "x")  # a near miss is logged as a rejection
    world.trigger("echo", "poll", {"t": 1}, OPS)
    log = world.log()
    assert "rejected an unknown bearer token" in log
    for value in (OPS, RO, HOOK_KEY):
        assert value not in log


def test_log_lines_are_json_when_not_a_terminal(world: ServeWorld) -> None:
    lines = [ln for ln in world.log().splitlines() if ln.strip()]
    parsed = [json.loads(ln) for ln in lines]
    assert all({"ts", "level", "logger", "msg"} <= set(p) for p in parsed)
    assert any(p["msg"].startswith("posture=unconfined") and p["level"] == "warning" for p in parsed)


def test_boot_refusal_is_one_line_and_runs_nothing(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, """\
        service: {unconfined: true}
        plugins:
          echo: {schedules: [{every: 1s}]}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{name: ops, secret_ref: missing-ref, scopes: ["*"]}]
        """, {"echo": ECHO}, secrets={"something-else": "v" * 20})
    proc = run_ductile("serve", "--config", str(w.etc), timeout=60)
    assert_one_line_error(proc, "api.tokens[0].secret_ref", "missing-ref", "fix:")
    if w.db.exists():  # the database may be created before the vault refuses; it must hold no job
        with sqlite3.connect(w.db) as conn:
            assert conn.execute("select count(*) from jobs").fetchone()[0] == 0


def test_sd_notify_ready_and_stopping_reach_systemd(tmp_path: Path) -> None:
    import socket as socketlib

    name = f"ductile-serve-test-{os.getpid()}"
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(60)
        w = make_serve_world(tmp_path, """\
            service: {unconfined: true}
            plugins: {echo: {}}
            api: {listen: "127.0.0.1:@PORT@"}
            """, {"echo": ECHO})
        w.start(env={"NOTIFY_SOCKET": "@" + name})
        try:
            ready = listener.recv(4096).decode()
            assert "READY=1" in ready and "STATUS=serving: unconfined" in ready
        finally:
            code = w.stop()
        assert code == 0
        assert "STOPPING=1" in listener.recv(4096).decode()


def test_an_event_loop_stops_at_max_event_depth_and_records_why(tmp_path: Path) -> None:
    w = make_serve_world(tmp_path, """\
        service: {unconfined: true, max_event_depth: 2}
        plugins: {echo: {}}
        pipelines:
          - {name: loop, on: echo.done, steps: [{uses: echo}]}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
        """, {"echo": ECHO}, secrets={"api-ops": OPS})
    w.start()
    try:
        root = w.trigger("echo", "poll", {}, OPS)
        chain = [w.wait_job(root, OPS)]
        for depth in (1, 2):
            parent = chain[-1]["id"]
            child = wait_for(f"the depth-{depth} job", lambda: next(
                (j for j in w.request("GET", "/jobs?plugin=echo&limit=50", token=OPS)[1]["jobs"]
                 if j["parent_job_id"] == parent), None), log=w.log)
            chain.append(w.wait_job(child["id"], OPS))
        assert [j["event_depth"] for j in chain] == [0, 1, 2]
        events = [e["type"] for e in chain[-1]["events"]]
        assert events == ["echo.done", "pipeline.depth_exceeded"]
        why = chain[-1]["events"][1]["payload"]["why"]
        assert "max_event_depth 2" in why
        assert w.request("GET", "/healthz")[1]["queue_depth"] == 0
        assert len(w.request("GET", "/jobs?plugin=echo", token=OPS)[1]["jobs"]) == 3
        assert "pipeline loop stopped" in w.log()
    finally:
        assert w.stop() == 0
