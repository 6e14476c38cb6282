"""Attacks on a running ``ductile serve``, over real HTTP, by hostile clients and plugins
(issue #11). Each test is the attack; it passes when the attack fails."""

from __future__ import annotations

import json

import pytest

from servehelp import ECHO, PY, ServeWorld, make_serve_world, wait_for

from ductile.serve.signatures import sign

OPS = "ops-token-" + "d4" * 16
VIEWER = "viewer-token-" + "f6" * 16
ECHO_WRITER = "echo-writer-token-" + "a7" * 16
HOOK_KEY = "hook-key-" + "e5" * 16

# Emits what its payload asks for: {"emit": [[type, count], ...]} in one answer.
EVIL = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    p = req["payload"]
    if "error" in p:  # a hostile answer aimed at the operator's terminal
        sys.stderr.write(p["error"] + "\\n")
        json.dump({{"status": "error", "error": p["error"], "retry": False,
                   "logs": [{{"level": "error", "message": p["error"]}}]}}, sys.stdout)
        sys.exit(0)
    events = [{{"type": t, "payload": {{"n": i, "from": "evil"}}}} for t, count in p.get("emit", []) for i in range(count)]
    json.dump({{"status": "ok", "result": {{"emitted": len(events)}}, "events": events}}, sys.stdout)
'''

LOWLY = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    json.dump({{"status": "ok", "result": "done", "events": [{{"type": "lowly.done", "payload": {{"from": "lowly"}}}}]}},
              sys.stdout)
'''

SINK = f'''\
    #!{PY}
    import json, sys
    req = json.load(sys.stdin)
    json.dump({{"status": "ok", "result": {{"payload": req["payload"], "event": req.get("event")}}}}, sys.stdout)
'''

CONFIG = """\
    service: {unconfined: true, max_workers: 2, shutdown_timeout: 5s}
    plugins:
      echo: {retry: {max_attempts: 1}}
      evil: {retry: {max_attempts: 1}}
      writer: {retry: {max_attempts: 1}}
      lowly: {retry: {max_attempts: 1}}
      sink: {retry: {max_attempts: 1}}
      notify: {retry: {max_attempts: 1}}
      ticker:
        schedules: [{every: 1h, payload: {token: s3cr3t-in-a-schedule, channel: ops-room}}]
    pipelines:
      - {name: after-lowly, on: {event: lowly.done, from: lowly}, steps: [{uses: writer, command: handle}]}
      - {name: burst, on: evil.burst, steps: [{uses: sink}, {uses: sink, command: poll}]}
      - {name: tell, on: {event: echo.done, from: echo}, steps: [{uses: notify}]}
    api:
      listen: 127.0.0.1:@PORT@
      header_timeout: 2s
      body_timeout: 2s
      tokens:
        - {name: ops, secret_ref: api-ops, scopes: ["*"]}
        - {name: viewer, secret_ref: api-viewer, scopes: ["echo:ro"]}
        - {name: echo-writer, secret_ref: api-echo-writer, scopes: ["echo:rw", "notify:rw"]}
    webhooks:
      - {path: /hooks/echo, plugin: echo, secret_ref: echo-hook}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("hostile"), CONFIG,
                         {"echo": ECHO, "evil": EVIL, "writer": ECHO, "lowly": LOWLY, "sink": SINK, "notify": SINK,
                          "ticker": SINK},
                         secrets={"api-ops": OPS, "echo-hook": HOOK_KEY, "api-viewer": VIEWER,
                                  "api-echo-writer": ECHO_WRITER})
    for name in ("writer", "notify"):  # their handle acts on the world: a write command
        (w.plugins / name / "manifest.yaml").write_text(
            f"name: {name}\nprotocol: 2\nentrypoint: run\ncommands: [{{name: poll, type: read}}, {{name: handle, type: write}}]\n")
    w.start()
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def jobs_of(world: ServeWorld, plugin: str) -> list[dict]:
    """Every job of ``plugin``, whole: ``GET /jobs`` lists summaries, ``GET /job`` the rest."""
    status, body = world.request("GET", f"/jobs?plugin={plugin}&limit=1000", token=OPS)
    assert status == 200, body
    return [world.job(j["id"], OPS) for j in body["jobs"]]


# -- 5. parser edges: 400 with a reason, never 500, nothing queued -------------------------

EDGES = {
    "nested 100 000 deep": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeper than 128"),
    "5 000-digit integer": (b'{"n": ' + b"7" * 5000 + b"}", "5000 digits"),
    "NaN": (b'{"n": NaN}', "NaN is not a JSON value"),
    "Infinity": (b'{"n": [Infinity]}', "Infinity is not a JSON value"),
    "overflowing float": (b'{"n": 1e999}', "out of range"),
}


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_parser_edges_on_the_api_are_400_with_a_reason(world: ServeWorld, edge: str) -> None:
    body, needle = EDGES[edge]
    before = len(jobs_of(world, "echo"))
    status, answer = world.request("POST", "/plugin/echo/poll", body, token=OPS)
    assert status == 400, (status, answer)
    assert needle in answer["error"] and answer["fix"]
    assert len(jobs_of(world, "echo")) == before
    assert world.request("GET", "/healthz")[0] == 200


@pytest.mark.parametrize("edge", sorted(EDGES))
def test_parser_edges_in_signed_webhooks_are_400_too(world: ServeWorld, edge: str) -> None:
    body, needle = EDGES[edge]
    before = len(jobs_of(world, "echo"))
    status, answer = world.request("POST", "/hooks/echo", body,
                                   headers={"X-Hub-Signature-256": "sha256=" + sign(HOOK_KEY.encode(), body)})
    assert status == 400, (status, answer)
    assert needle in answer["error"]
    assert len(jobs_of(world, "echo")) == before


def test_no_parser_edge_left_a_traceback_or_a_500_in_the_log(world: ServeWorld) -> None:
    log = world.log()
    assert "Traceback" not in log and "internal error" not in log
    assert all(json.loads(line).get("level") != "error" for line in log.splitlines() if line.startswith("{"))


# -- 1. event spoofing and amplification ---------------------------------------------------

def test_thirty_thousand_events_in_one_answer_start_at_most_the_caps_and_healthz_holds(world: ServeWorld) -> None:
    job_id = world.trigger("evil", "poll", {"emit": [["evil.burst", 30_000], ["plugin.account_downgraded", 5]]}, OPS)
    answered = []

    def finished() -> dict | None:
        status, health = world.request("GET", "/healthz", timeout=30)
        answered.append(status)
        job = world.job(job_id, OPS)
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for("the 30 000-event job to settle", finished, log=world.log, interval=0.02)
    assert set(answered) == {200} and len(answered) >= 1
    assert job["status"] == "succeeded", job  # the work happened; only its excess is refused
    assert job["result"] == {"emitted": 30_005}
    types = [e["type"] for e in job["events"]]
    assert types == ["evil.burst"] * 100, (len(types), set(types))
    warnings = "\n".join(job["warnings"])
    assert "29900 events past service.max_events_per_response (100)" in warnings
    assert "5 events in the gateway's namespace plugin.*" in warnings
    assert "did not queue 100 pipeline job(s) past service.max_routed_jobs_per_response (100)" in warnings
    children = [j for j in jobs_of(world, "sink") if j["parent_job_id"] == job_id]
    assert len(children) == 100


def test_another_plugin_emitting_the_bound_event_type_starts_nothing(world: ServeWorld) -> None:
    spoof = world.trigger("evil", "poll", {"emit": [["lowly.done", 30_000]]}, OPS)
    real = world.trigger("lowly", "poll", {}, OPS)
    assert world.wait_job(spoof, OPS)["status"] == "succeeded"
    assert world.wait_job(real, OPS)["status"] == "succeeded"

    def routed() -> list | None:
        jobs = [j for j in jobs_of(world, "writer") if j["parent_job_id"] in (spoof, real)]
        return jobs if jobs and all(j["status"] == "succeeded" for j in jobs) else None

    jobs = wait_for("the job lowly.done started", routed, log=world.log)
    assert [j["parent_job_id"] for j in jobs] == [real]  # none from the 30 000 spoofed ones
    assert jobs[0]["result"]["event"]["payload"] == {"from": "lowly"}


def test_a_plugin_cannot_write_the_gateways_own_events(world: ServeWorld) -> None:
    job_id = world.trigger("evil", "poll", {"emit": [["plugin.account_downgraded", 1], ["pipeline.denied", 1],
                                                      ["job.failed", 1], ["webhook", 1], ["api.trigger", 1],
                                                      ["ductile.step.succeeded", 1], ["evil.fine", 1]]}, OPS)
    job = world.wait_job(job_id, OPS)
    assert job["status"] == "succeeded"
    assert [e["type"] for e in job["events"]] == ["evil.fine"]
    assert len(job["warnings"]) == 6, job["warnings"]


# -- 2. a read-only token cannot reach a write step through a pipeline ---------------------

def chain_of(world: ServeWorld, root: str) -> dict:
    """The root job settled, and what its echo.done event did downstream."""
    job = world.wait_job(root, OPS)
    assert job["status"] == "succeeded", job
    return job


def test_a_read_only_token_cannot_start_a_write_step_through_a_pipeline(world: ServeWorld) -> None:
    root = world.trigger("echo", "poll", {"attack": "ro-token"}, VIEWER)
    job = chain_of(world, root)
    assert job["trigger"] == "api:viewer"
    assert job["authority"] == {"trigger": "api:viewer", "scopes": ["echo:ro"]}
    denied = [e for e in job["events"] if e["type"] == "pipeline.denied"]
    assert len(denied) == 1, job["events"]
    why = denied[0]["payload"]
    assert (why["pipeline"], why["step"], why["command"], why["root_trigger"]) == ("tell", "notify", "handle", "api:viewer")
    assert "holds echo:ro, not write scope on notify" in why["why"]
    assert not [j for j in jobs_of(world, "notify") if j["parent_job_id"] == root]


@pytest.mark.parametrize(("token", "trigger"), [(OPS, "api:ops"), (ECHO_WRITER, "api:echo-writer")])
def test_a_token_with_write_scope_on_the_step_reaches_it_and_the_chain_inherits_its_authority(
        world: ServeWorld, token: str, trigger: str) -> None:
    root = world.trigger("echo", "poll", {"by": trigger}, token)
    chain_of(world, root)

    def child() -> dict | None:
        found = [j for j in jobs_of(world, "notify") if j["parent_job_id"] == root and j["status"] == "succeeded"]
        return found[0] if found else None

    notify = wait_for("the notify step", child, log=world.log)
    assert notify["trigger"] == f"pipeline:{root}"
    assert notify["authority"]["trigger"] == trigger


def test_webhooks_carry_the_operators_authority(world: ServeWorld) -> None:
    body = b'{"from": "webhook"}'
    status, answer = world.request("POST", "/hooks/echo", body,
                                   headers={"X-Hub-Signature-256": "sha256=" + sign(HOOK_KEY.encode(), body),
                                            "X-GitHub-Delivery": "authority-check"})
    assert status == 202, answer
    job = world.wait_job(answer["job_id"], OPS)
    assert job["trigger"] == "webhook:/hooks/echo" and job["authority"] == {"trigger": "webhook:/hooks/echo",
                                                                            "scopes": None}


# -- 3. webhook replays ---------------------------------------------------------------------

def deliver(world: ServeWorld, body: bytes, delivery: str | None, key: str = HOOK_KEY) -> tuple[int, dict]:
    headers = {"X-Hub-Signature-256": "sha256=" + sign(key.encode(), body)}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return world.request("POST", "/hooks/echo", body, headers=headers)


def test_the_same_signed_delivery_three_times_queues_one_job(world: ServeWorld) -> None:
    body = b'{"action": "opened", "replay": 1}'
    before = len(jobs_of(world, "echo"))
    status, first = deliver(world, body, "7f1c-replay-1")
    assert status == 202, first
    for _ in range(2):
        status, again = deliver(world, body, "7f1c-replay-1")
        assert (status, again["duplicate"], again["job_id"]) == (200, True, first["job_id"]), again
    assert len(jobs_of(world, "echo")) == before + 1
    assert "replay (same delivery id within replay_window)" in world.log()


def test_a_replay_under_a_fresh_delivery_id_is_still_a_replay(world: ServeWorld) -> None:
    """The signature covers the body only: a captured delivery resent with a new id repeats it."""
    body = b'{"action": "opened", "replay": 2}'
    status, first = deliver(world, body, "id-a")
    assert status == 202
    for other in ("id-b", None):
        status, again = deliver(world, body, other)
        assert (status, again.get("duplicate"), again.get("job_id")) == (200, True, first["job_id"]), again


def test_a_new_body_under_a_used_delivery_id_is_a_replay_and_a_new_delivery_is_not(world: ServeWorld) -> None:
    status, first = deliver(world, b'{"replay": 3}', "id-c")
    assert status == 202
    status, again = deliver(world, b'{"replay": 3, "tampered": true}', "id-c")
    assert (status, again.get("job_id")) == (200, first["job_id"])
    status, fresh = deliver(world, b'{"replay": 4}', "id-d")
    assert status == 202 and fresh["job_id"] != first["job_id"]


def test_an_unsigned_replay_is_refused_before_it_is_remembered(world: ServeWorld) -> None:
    body = b'{"replay": 5}'
    status, _ = deliver(world, body, "id-e", key="not-the-key")
    assert status == 401
    status, answer = deliver(world, body, "id-e")  # the real delivery was not poisoned by the forgery
    assert status == 202, answer


def test_identical_deliveries_at_the_same_moment_queue_one_job(world: ServeWorld) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = b'{"replay": "race"}'
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: deliver(world, body, "id-race"), range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [202], answers
    assert len({a["job_id"] for _, a in answers}) == 1


# -- 4. an idle-connection flood from a local user ------------------------------------------

FLOODER = r'''
import json, os, select, socket, sys, time
port, want = int(sys.argv[1]), int(sys.argv[2])
PARTIAL = b"POST /plugin/echo/poll HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\nContent-Le"
live, opened, closed_by_server, peak = {}, 0, 0, 0
poller = select.poll()
poller.register(0, select.POLLIN)

def connect():
    global opened, peak
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(PARTIAL)
    except OSError:
        return
    s.setblocking(False)
    live[s.fileno()] = s
    poller.register(s, select.POLLIN)
    opened += 1
    peak = max(peak, len(live))

while len(live) < want:
    connect()
print(json.dumps({"ready": len(live)}), flush=True)
stop = False
while not stop:
    for fd, _ in poller.poll(500):
        if fd == 0:
            stop = True
            continue
        s = live.pop(fd, None)
        if s is None:
            continue
        poller.unregister(fd)
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        s.close()
        closed_by_server += 1   # the server closed a half-sent request: reopen it (a real flood does)
    for _ in range(want - len(live)):
        connect()
print(json.dumps({"opened": opened, "closed_by_server": closed_by_server, "peak": peak, "open": len(live)}), flush=True)
'''

FLOOD_CONFIG = """\
    service: {unconfined: true, max_workers: 2}
    plugins:
      echo: {}
    api:
      listen: 127.0.0.1:@PORT@
      header_timeout: 3s
      tokens:
        - {name: ops, secret_ref: api-ops, scopes: ["*"]}
"""


@pytest.mark.privileged
def test_an_idle_connection_flood_from_a_local_user_cannot_take_serve_down(tmp_path) -> None:
    import resource
    import subprocess

    from wallworld import free_ids, kill_uid, require_root

    require_root()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    w = make_serve_world(tmp_path, FLOOD_CONFIG, {"echo": ECHO}, secrets={"api-ops": OPS})
    w.start(prefix=("prlimit", f"--nofile=1024:{hard}", "--"))  # the default soft limit of a login
    [uid] = free_ids(1)
    flooders: list[subprocess.Popen[str]] = []
    try:
        assert f"open files: soft limit {hard} (raised from 1024" in w.log()
        for _ in range(2):  # 2 x 550 = 1 100 half-sent requests, each process under 1 024 fds
            flooders.append(subprocess.Popen(
                ["prlimit", "--nofile=1024:1024", "--", PY, "-c", FLOODER, str(w.port), "550"],
                user=uid, group=uid, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}))
        for f in flooders:
            line = f.stdout.readline()
            assert line and json.loads(line)["ready"] == 550, (line, f.stderr.read() if f.poll() is not None else "")
        # the flood is up and reconnecting: the gateway still answers and still runs jobs
        for _ in range(5):
            status, health = w.request("GET", "/healthz", timeout=30)
            assert status == 200 and health["status"] == "ok", (status, health)
        job_id = w.trigger("echo", "poll", {"during": "flood"}, OPS)
        assert w.wait_job(job_id, OPS)["status"] == "succeeded"
        reports = []
        for f in flooders:
            out, err = f.communicate(input="", timeout=60)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        assert sum(r["closed_by_server"] for r in reports) > 0, reports  # bounded: evicted or timed out
        assert sum(r["opened"] for r in reports) >= 1100, reports
        log = w.log()
        assert "connection guard:" in log
        assert "Too many open files" not in log and "Traceback" not in log
    finally:
        for f in flooders:
            if f.poll() is None:
                f.kill()
                f.wait()
        kill_uid(uid)
        code = w.stop()
    assert code == 0, w.log()[-3000:]


def _read_until_closed(sock, limit: float = 60.0) -> bytes:
    """Everything the server sends until it closes (a generous deadline, not a timing check)."""
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_request_trickled_a_byte_at_a_time_is_closed_at_the_header_timeout(world: ServeWorld) -> None:
    """Each byte resets uvicorn's keep-alive timer; the header timeout does not care."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", world.port)) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        sent = 0
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sent += 1
            time.sleep(0.1)
        if not closed:
            assert _read_until_closed(sock) == b""
    assert sent < len(request)  # cut off before the whole trickle: 200+ bytes at 10/s is 20s > 2s


def test_a_body_that_never_finishes_is_cut_off_at_the_body_timeout(world: ServeWorld) -> None:
    import socket

    before = len(jobs_of(world, "echo"))
    with socket.create_connection(("127.0.0.1", world.port)) as sock:
        sock.sendall(b"POST /plugin/echo/poll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + OPS.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\": ")
        answer = _read_until_closed(sock)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert len(jobs_of(world, "echo")) == before


def test_the_gateway_is_still_whole_after_the_slow_clients(world: ServeWorld) -> None:
    assert world.request("GET", "/healthz")[0] == 200
    job = world.wait_job(world.trigger("echo", "poll", {"after": "slow"}, OPS), OPS)
    assert job["status"] == "succeeded"


# -- 6. terminal escapes ---------------------------------------------------------------------

ESCAPES = "\x1b]2;owned\x07\x1b[2J\x1b[31mred\u202eevil\x9b1m"
RAW = ("\x1b", "\x07", "\u202e", "\x9b")


def test_plugin_run_prints_a_hostile_error_inert_and_json_exact(world: ServeWorld) -> None:
    from conftest import run_ductile

    payload = json.dumps({"error": ESCAPES})
    human = run_ductile("plugin", "run", "evil", "-C", "poll", "--payload", payload, "--config", str(world.etc))
    assert human.returncode == 1
    shown = human.stdout + human.stderr
    assert not any(ch in shown for ch in RAW), repr(shown)
    assert "\\x1b]2;owned\\x07\\x1b[2J" in shown and "\\u202eevil" in shown
    exact = run_ductile("plugin", "run", "evil", "-C", "poll", "--payload", payload, "--json", "--config", str(world.etc))
    out = json.loads(exact.stdout)
    assert out["outcome"]["error"]["message"] == ESCAPES
    assert out["logs"] == [{"level": "error", "message": ESCAPES}]


def test_job_show_prints_hostile_stderr_and_errors_inert_even_on_a_terminal(world: ServeWorld) -> None:
    import sys

    from conftest import run_ductile, run_in_pty

    job_id = world.trigger("evil", "poll", {"error": ESCAPES}, OPS)
    job = world.wait_job(job_id, OPS)
    assert job["status"] == "failed" and ESCAPES in job["stderr_tail"]  # the API is JSON: exact
    code, screen = run_in_pty([sys.executable, "-m", "ductile", "job", "show", job_id, "--config", str(world.etc)],
                              env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert code == 0, screen
    text = screen.decode("utf-8", "replace")
    # rich styles its own table on a terminal (\x1b[1m...); none of the plugin's sequences get through
    assert not any(seq in text for seq in ("\x1b]2;", "\x07", "\x1b[2J", "\x1b[31m", "\u202e", "\x9b")), repr(text)
    assert "\\x1b]2;owned" in text
    listed = run_ductile("job", "list", "--plugin", "evil", "--config", str(world.etc))
    assert listed.returncode == 0 and not any(ch in listed.stdout for ch in RAW)
    exact = json.loads(run_ductile("job", "show", job_id, "--json", "--config", str(world.etc)).stdout)
    assert ESCAPES in exact["job"]["stderr_tail"] and exact["job"]["last_error"].endswith(ESCAPES[-10:])


# -- 7. one redaction rule --------------------------------------------------------------------

SCHEDULE_SECRET = "s3cr3t-in-a-schedule"


def test_a_secret_in_a_schedule_payload_is_redacted_wherever_config_show_redacts_it(world: ServeWorld) -> None:
    import sqlite3

    from conftest import run_ductile

    def fired() -> list | None:
        done = [j for j in jobs_of(world, "ticker") if j["status"] == "succeeded"]
        return done or None

    [job] = wait_for("the scheduled ticker job", fired, log=world.log)
    views = {"GET /job": job,
             "job show --json": json.loads(run_ductile("job", "show", job["id"], "--json", "--config",
                                                       str(world.etc)).stdout)["job"]}
    for where, view in views.items():
        assert view["payload"] == {"token": "<redacted>", "channel": "ops-room"}, where
        assert view["result"]["payload"]["token"] == "<redacted>", where
        assert SCHEDULE_SECRET not in json.dumps(view), where
    summaries = {"GET /jobs": world.request("GET", "/jobs?plugin=ticker", token=OPS)[1]["jobs"],
                 "job list --json": json.loads(run_ductile("job", "list", "--json", "--plugin", "ticker", "--config",
                                                           str(world.etc)).stdout)}
    for where, listed in summaries.items():  # listings carry no payload or result at all
        assert listed and all("payload" not in j and "result" not in j for j in listed), where
        assert SCHEDULE_SECRET not in json.dumps(listed), where
    human = run_ductile("job", "show", job["id"], "--config", str(world.etc))
    assert SCHEDULE_SECRET not in human.stdout + human.stderr and "ops-room" in human.stdout
    shown = run_ductile("config", "show", "--config", str(world.etc))
    assert SCHEDULE_SECRET not in shown.stdout and "<redacted>" in shown.stdout
    # the plugin itself got the value (the row keeps what the plugin needs), and doctor says where it belongs
    with sqlite3.connect(world.db) as conn:
        [(payload,)] = conn.execute("SELECT payload FROM jobs WHERE id = ?", (job["id"],)).fetchall()
    assert SCHEDULE_SECRET in payload
    doctor = json.loads(run_ductile("doctor", "--json", "--config", str(world.etc)).stdout)
    [warn] = [f for f in doctor["findings"] if f["category"] == "secrets"]
    assert warn["field"] == "plugins.ticker.schedules[0].payload.token" and "vault set NAME --grant ticker" in warn["fix"]
    assert SCHEDULE_SECRET not in json.dumps(doctor)
