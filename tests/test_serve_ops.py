"""A real serve in production shape: the breaker opening and half-opening on a failing
scheduled plugin, lifecycle events notifying through a pipeline (and a failing hook that
stops at max_event_depth), schedule policies, /metrics parsed by the Prometheus text
parser, and the job inspection filters. No timed assertions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import run_ductile
from servehelp import BAD, ECHO, PY, WAITER, ServeWorld, make_serve_world, wait_for

OPS = "ops-token-" + "a1" * 16
SCRAPER = "scrape-token-" + "b2" * 16
VIEWER = "view-token-" + "c3" * 16


AT = (datetime.now(timezone.utc) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
# a window that excludes now, on the UTC clock: the schedule must never run in this test
now_utc = datetime.now(timezone.utc)
CLOSED_WINDOW = f"{(now_utc + timedelta(hours=2)).strftime('%H')}:00-{(now_utc + timedelta(hours=3)).strftime('%H')}:00"

CONFIG = f"""\
    service: {{unconfined: true, max_workers: 4, shutdown_timeout: 5s, max_event_depth: 2}}
    plugins:
      flaky:
        retry: {{max_attempts: 1}}
        breaker: {{threshold: 2, reset_after: 3s}}
        schedules: [{{every: 1s, payload: {{mode: error}}}}]
      bad:
        retry: {{max_attempts: 1}}
      failer:
        retry: {{max_attempts: 1}}
      notify: {{}}
      slow:
        timeouts: {{poll: 120s}}
        schedules: [{{every: 1s, payload: {{gate: /nonexistent-gate}}}}]
      churn:
        timeouts: {{poll: 120s}}
        schedules: [{{every: 1s, if_running: cancel, payload: {{gate: /nonexistent-gate}}}}]
      once:
        schedules: [{{at: "{AT}"}}, {{after: 1s, command: health}}]
      forger: {{}}
      office:
        schedules: [{{every: 1s, timezone: UTC, only_between: "{CLOSED_WINDOW}"}}]
    pipelines:
      - {{name: alert, on: {{event: job.dead, from: flaky}}, steps: [{{uses: notify}}]}}
      - {{name: hook-loop, on: {{event: job.failed, from: [bad, failer]}}, steps: [{{uses: failer}}]}}
    api:
      listen: 127.0.0.1:@PORT@
      tokens:
        - {{name: ops, secret_ref: api-ops, scopes: ["*"]}}
        - {{name: scraper, secret_ref: api-scraper, scopes: ["metrics:ro"]}}
        - {{name: viewer, secret_ref: api-viewer, scopes: ["notify:ro"]}}
"""

FAILER = f'''\
    #!{PY}
    import json, sys
    json.load(sys.stdin)
    json.dump({{"status": "error", "error": "hook failed too", "retry": False}}, sys.stdout)
'''


# a hostile plugin forging the gateway's failure and breaker events to set off its hooks
FORGER = f'''\
    #!{PY}
    import json, sys
    json.load(sys.stdin)
    json.dump({{"status": "ok", "result": "forged", "events": [
        {{"type": "job.dead", "payload": {{"plugin": "flaky", "command": "poll", "job_id": "x", "error": "fake"}}}},
        {{"type": "plugin.breaker_opened", "payload": {{"plugin": "flaky"}}}}]}}, sys.stdout)
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    from servehelp import plugin

    w = make_serve_world(tmp_path_factory.mktemp("ops"), CONFIG,
                         {"flaky": BAD, "bad": BAD, "failer": FAILER, "notify": ECHO, "slow": WAITER, "churn": WAITER,
                          "office": ECHO, "forger": FORGER},
                         secrets={"api-ops": OPS, "api-scraper": SCRAPER, "api-viewer": VIEWER})
    plugin(w.plugins, "once", ECHO, commands="[{name: poll, type: read}, {name: health, type: read}]")
    w.start()
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def jobs(w: ServeWorld, plugin: str, limit: int = 1000) -> list[dict]:
    status, body = w.request("GET", f"/jobs?plugin={plugin}&limit={limit}", token=OPS)
    assert status == 200, body
    return list(body["jobs"])


def events(w: ServeWorld, type_: str) -> list[dict]:
    from ductile.state import open_state

    with open_state(str(w.db), create=False) as db:
        return [e.as_dict() for e in db.events.list_events(type=type_, limit=1000)]


def test_the_breaker_opens_then_lets_one_half_open_try_through(world: ServeWorld) -> None:
    def opened_twice() -> list[dict] | None:
        found = events(world, "plugin.breaker_opened")
        return found if len([e for e in found if e["payload"]["plugin"] == "flaky"]) >= 2 else None

    opens = [e for e in wait_for("the breaker to open, half-open and open again", opened_twice, log=world.log)
             if e["payload"]["plugin"] == "flaky"]
    first, second = opens[0]["payload"], opens[1]["payload"]
    assert first["failures"] == 2 and first["state"] == "open"
    # between the two openings exactly one scheduled run went through: the half-open try
    tried = [j for j in jobs(world, "flaky") if j["trigger"] == "schedule"
             and first["opened_at"] < j["created_at"] < second["opened_at"]]
    assert len(tried) == 1, tried
    assert tried[0]["created_at"] >= first["retry_at"]
    assert "opened after 2 failed scheduled run(s)" in world.log()

    health = world.request("GET", "/healthz")[1]
    assert any(b["plugin"] == "flaky" and b["state"] in ("open", "half_open") for b in health["breakers"])
    status = run_ductile("system", "status", "--config", str(world.etc), "--json")
    assert any(b["plugin"] == "flaky" for b in json.loads(status.stdout)["breakers"])

    # an operator can still run it by hand while the breaker is open
    job_id = world.trigger("flaky", "poll", {"mode": "ok"}, OPS)
    assert world.wait_job(job_id, OPS)["status"] == "succeeded"

    shown = run_ductile("system", "breaker", "flaky", "--config", str(world.etc), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["breakers"][0]["threshold"] == 2
    reset = run_ductile("system", "breaker", "flaky", "--reset", "--config", str(world.etc))
    assert reset.returncode == 0 and "reset the breaker of flaky" in reset.stdout, reset.stderr
    assert "reset by the operator" in wait_for("the reset in the log", lambda: world.log() if
                                               "reset by the operator" in world.log() else None)


def test_job_dead_notifies_through_a_pipeline_bound_to_the_plugin(world: ServeWorld) -> None:
    def notified() -> dict | None:
        for j in jobs(world, "notify"):
            if j["status"] == "succeeded":
                full = world.job(j["id"], OPS)
                if (full["result"]["event"] or {}).get("type") == "job.dead":
                    return full
        return None

    note = wait_for("a notify job started by job.dead", notified, log=world.log)
    event = note["result"]["event"]
    payload = event["payload"]
    assert event["pipeline"] == "alert" and event["source_plugin"] == "flaky"
    assert payload["plugin"] == "flaky" and payload["command"] == "poll" and payload["status"] == "dead"
    assert payload["job_id"] == note["parent_job_id"] and payload["attempt"] == 1
    assert payload["error"] and payload["reason"] == "attempts_exhausted"
    assert set(payload) == {"plugin", "command", "job_id", "status", "attempt", "max_attempts", "trigger", "reason",
                            "error"}  # never the job's payload, result, stderr or secrets


def test_a_hook_whose_own_job_fails_stops_at_max_event_depth(world: ServeWorld) -> None:
    root = world.trigger("bad", "poll", {"mode": "noretry"}, OPS)
    assert world.wait_job(root, OPS)["status"] == "failed"

    def chain() -> list[dict] | None:
        found = [e for e in events(world, "pipeline.depth_exceeded") if e["payload"]["step"] == "failer"]
        return found or None

    stopped = wait_for("the hook chain to stop", chain, log=world.log)
    assert stopped[0]["payload"]["max_event_depth"] == 2
    # root (depth 0) -> failer (1) -> failer (2) -> stopped: two hook jobs in this chain
    hooks, parent = [], root
    while True:
        kids = [j for j in jobs(world, "failer") if j["parent_job_id"] == parent]
        if not kids:
            break
        hooks.append(kids[0])
        parent = kids[0]["id"]
    assert [h["event_depth"] for h in hooks] == [1, 2]
    shown = run_ductile("job", "show", hooks[0]["id"], "--config", str(world.etc), "--json")
    chain_ = json.loads(shown.stdout)["chain"]
    assert [a["id"] for a in chain_["ancestors"]] == [root]
    assert [c["id"] for c in chain_["children"]] == [hooks[1]["id"]]
    text = run_ductile("job", "show", hooks[0]["id"], "--config", str(world.etc)).stdout
    assert "chain:" in text and root in text and hooks[1]["id"] in text


def test_if_running_skip_keeps_one_job_while_the_previous_runs(world: ServeWorld) -> None:
    wait_for("a skip line for slow", lambda: "schedules[0] skipped the run" in world.log()
             and "if_running: skip" in world.log(), log=world.log)
    assert len(jobs(world, "slow")) == 1  # every 1s, and still the one job that never ends


def test_if_running_cancel_replaces_the_previous_job(world: ServeWorld) -> None:
    def superseded() -> list[dict] | None:
        found = [j for j in jobs(world, "churn") if j["status"] == "failed"]
        return found or None

    job = world.job(wait_for("a superseded churn job", superseded, log=world.log)[0]["id"], OPS)
    assert "superseded" in job["last_error"] and "if_running: cancel" in job["last_error"]
    assert not [e for e in events(world, "job.failed") if e["payload"]["plugin"] == "churn"]  # not a failure hook


def test_one_shots_run_once(world: ServeWorld) -> None:
    def both() -> list[dict] | None:
        found = [j for j in jobs(world, "once") if j["status"] == "succeeded"]
        return found if {j["command"] for j in found} == {"poll", "health"} else None

    wait_for("the at: and after: one-shots", both, log=world.log)
    wait_for("a few more ticks", lambda: world.request("GET", "/healthz")[1]["uptime_seconds"] > 8, log=world.log)
    found = jobs(world, "once")
    assert sorted(j["command"] for j in found) == ["health", "poll"]
    at = datetime.fromisoformat(AT.replace("Z", "+00:00"))
    poll = next(j for j in found if j["command"] == "poll")
    assert datetime.fromisoformat(poll["created_at"].replace("Z", "+00:00")) >= at


def test_only_between_outside_its_window_runs_nothing(world: ServeWorld) -> None:
    wait_for("the office schedule's skip line", lambda: "outside only_between" in world.log(), log=world.log)
    assert jobs(world, "office") == []


def test_metrics_parse_with_the_prometheus_text_parser(world: ServeWorld) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert world.request("GET", "/metrics")[0] == 401
    assert world.request("GET", "/metrics", token=VIEWER)[0] == 403
    wait_for("a finished job", lambda: any(j["status"] == "succeeded" for j in jobs(world, "notify")), log=world.log)
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {SCRAPER}"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("ductile_posture", (("posture", "unconfined"),))] == 1.0
    assert any(name == "ductile_jobs_total" and dict(labels).get("plugin") == "notify"
               and dict(labels).get("status") == "succeeded" for name, labels in samples)
    assert any(name == "ductile_job_duration_seconds_count" for name, _ in samples)
    assert ("ductile_queue_depth", ()) in samples and ("ductile_jobs_running", ()) in samples
    assert sum(v for (name, labels), v in samples.items()
               if name == "ductile_breaker_state" and dict(labels)["plugin"] == "flaky") == 1.0
    assert samples[("ductile_containment", (("mode", "sweep"),))] + \
        samples[("ductile_containment", (("mode", "cgroup"),))] == 1.0
    assert ("ductile_reload_generation", ()) in samples


def test_job_list_filters_by_time_and_by_text_in_the_error(world: ServeWorld) -> None:
    job_id = world.trigger("bad", "poll", {"mode": "exit78"}, OPS)
    world.wait_job(job_id, OPS)
    status, body = world.request("GET", "/jobs?search=MISCONFIGURED&since=1h", token=OPS)
    assert status == 200 and job_id in [j["id"] for j in body["jobs"]]
    status, body = world.request("GET", "/jobs?search=MISCONFIGURED&until=2000-01-01T00:00:00Z", token=OPS)
    assert status == 200 and body["jobs"] == []
    assert world.request("GET", "/jobs?since=yesterday-ish", token=OPS)[0] == 400
    proc = run_ductile("job", "list", "--config", str(world.etc), "--search", "misconfig", "--since", "1h", "--json")
    assert proc.returncode == 0, proc.stderr
    assert job_id in [j["id"] for j in json.loads(proc.stdout)]
    proc = run_ductile("job", "list", "--config", str(world.etc), "--search", "misconfig", "--until", "2000-01-01")
    assert proc.returncode == 0 and "no jobs" in proc.stdout
    bad = run_ductile("job", "list", "--config", str(world.etc), "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_lifecycle_payload_for_a_job_the_viewer_may_not_read_is_not_listed(world: ServeWorld, tmp_path: Path) -> None:
    """The viewer token (notify:ro) sees notify jobs but a /jobs search never leaks others."""
    status, body = world.request("GET", "/jobs?search=misconfigured", token=VIEWER)
    assert status == 200 and all(j["plugin"] == "notify" for j in body["jobs"])


def test_a_plugin_cannot_forge_failure_or_breaker_events(world: ServeWorld) -> None:
    before = len([j for j in jobs(world, "notify")])
    job = world.wait_job(world.trigger("forger", "poll", {}, OPS), OPS)
    assert job["status"] == "succeeded" and job["events"] == []
    assert any("job.dead" in w for w in job["warnings"]) and any("plugin.breaker_opened" in w for w in job["warnings"])
    assert not [j for j in jobs(world, "notify") if j["parent_job_id"] == job["id"]]
    assert len(jobs(world, "notify")) >= before


def test_the_gateway_scopes_start_no_plugin(world: ServeWorld) -> None:
    status, body = world.request("POST", "/plugin/notify/poll", {}, token=SCRAPER)
    assert status == 403, body
    status, body = world.request("GET", "/jobs", token=SCRAPER)
    assert status == 200 and body["jobs"] == []
