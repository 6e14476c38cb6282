"""Plugins and clients written the way upstream ductile documents them run here unchanged,
confined: through ``plugin run`` and through ``serve``, as a root gateway and as a cap-only
one (issue #12).

The plugins below are our own, written from upstream's protocol and plugin guide (not copied):
a ``_``-prefixed Python plugin whose ``handle`` reads ``event.payload`` and whose manifest
carries ``manifest_spec``, ``values`` and ``input_schema``; a file-watch style poller that emits
``dedupe_key``s and is not concurrency safe (so its operator sets ``parallelism: 1``); a
snapshot plugin declaring ``fact_outputs`` with ``compatibility_view: mirror_object``; and a
``/bin/sh`` plugin in the shape of upstream's ``echo``.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import pytest

from servehelp import free_port, wait_for
from wallworld import Serving, World, destroy, make_world, require_root

pytestmark = pytest.mark.privileged

TOKEN = "compat-token-" + "c0ffee" * 6

GREET_MANIFEST = """\
manifest_spec: ductile.plugin
manifest_version: 1
name: _greet
version: "1.2.0"
protocol: 2
entrypoint: run.py
description: "Greets whoever the event names."
concurrency_safe: true
commands:
  - name: handle
    type: write
    description: "Greet event.payload.name and remember it."
    idempotent: false
    retry_safe: true
    input_schema:
      name: string
    values:
      consume: [payload.name]
      emit:
        - event: greet.done
          values: [payload.greeting]
  - name: health
    type: read
    description: "Always fine."
config_keys:
  required: [greeting]
  optional: [punctuation]
"""

GREET = """\
#!/usr/bin/python3
# handle reads event.payload, as upstream's plugin guide says; writes only under its cwd
import json, os, sys

req = json.load(sys.stdin)
if req["command"] == "health":
    json.dump({"status": "ok", "result": "healthy"}, sys.stdout)
    sys.exit(0)
event = req.get("event") or {}
name = (event.get("payload") or {}).get("name")
if not name:
    json.dump({"status": "error", "error": "event must include name", "retry": False,
               "logs": [{"level": "error", "message": "no name in event.payload"}]}, sys.stdout)
    sys.exit(0)
cfg = req["config"]
greeting = f"{cfg['greeting']}, {name}{cfg.get('punctuation', '!')}"
with open("greeted.txt", "a") as fh:
    fh.write(name + "\\n")
json.dump({"status": "ok", "result": {"greeting": greeting, "event_type": event.get("type"),
                                      "dedupe_key": event.get("dedupe_key"), "uid": os.getuid(),
                                      "cwd": os.getcwd()},
           "events": [{"type": "greet.done", "payload": {"greeting": greeting}}],
           "ductile_stopwatch_subs": [{"name": "greet", "ms": 1}]}, sys.stdout)
"""

WATCH_MANIFEST = """\
manifest_spec: ductile.plugin
manifest_version: 1
name: watch
version: "0.1.0"
protocol: 2
entrypoint: run.py
description: "Reports files, one event per file, keyed by path."
concurrency_safe: false
commands:
  - {name: poll, type: read, description: "List the configured files.", idempotent: true}
config_keys:
  optional: [files]
"""

WATCH = """\
#!/usr/bin/python3
import json, sys
req = json.load(sys.stdin)
files = req["config"].get("files", [])
json.dump({"status": "ok", "result": {"seen": len(files)},
           "events": [{"type": "watch.changed", "payload": {"name": f}, "dedupe_key": "file:" + f} for f in files]},
          sys.stdout)
"""

MIRROR_MANIFEST = """\
manifest_spec: ductile.plugin
manifest_version: 1
name: mirror
protocol: 2
entrypoint: run.py
commands:
  - {name: poll, type: read}
fact_outputs:
  - when: {command: poll}
    from: state_updates
    fact_type: mirror.snapshot
    compatibility_view: mirror_object
"""

MIRROR = """\
#!/usr/bin/python3
# answers with the complete snapshot it was given, and shows the state it was sent
import json, sys
req = json.load(sys.stdin)
json.dump({"status": "ok", "result": {"state_seen": req["state"]}, "state_updates": req["payload"]["snapshot"]},
          sys.stdout)
"""

ECHO_SH_MANIFEST = """\
manifest_spec: ductile.plugin
manifest_version: 1
name: echo_sh
protocol: 2
entrypoint: run.sh
commands:
  - {name: poll, type: read}
  - {name: handle, type: read}
  - {name: health, type: read}
"""

ECHO_SH = """\
#!/bin/sh
# upstream's echo shape: read the request, answer with what kind of event arrived
req=$(cat)
case "$req" in
  *'"type":"api.trigger"'*) kind=api.trigger ;;
  *'"event":'*) kind=other ;;
  *) kind=none ;;
esac
printf '{"status":"ok","result":{"event":"%s","uid":"%s"},"logs":[{"level":"info","message":"echoed"}]}' "$kind" "$(id -u)"
"""

PLUGINS = {"_greet": (GREET_MANIFEST, "run.py", GREET), "watch": (WATCH_MANIFEST, "run.py", WATCH),
           "mirror": (MIRROR_MANIFEST, "run.py", MIRROR), "echo_sh": (ECHO_SH_MANIFEST, "run.sh", ECHO_SH)}


def install(world: World) -> None:
    for name, (manifest, entry, source) in PLUGINS.items():
        d = world.base / "plugins" / name
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
        (d / "manifest.yaml").write_text(manifest)
        (d / entry).write_text(source)
        os.chmod(d / entry, 0o755)


@pytest.fixture(scope="module", params=["root", "cap-only"])
def world(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    require_root()
    port = free_port()
    w = make_world(0 if request.param == "root" else None, ["default", "untrusted"], {
        "_greet": "{run_as: default, config: {greeting: Hello}}",
        "watch": "{run_as: default, parallelism: 1, config: {files: [a.csv, b.csv]}}",
        "mirror": "{run_as: default}",
        "echo_sh": "{run_as: untrusted}",
    })
    install(w)
    w.extra_config = textwrap.dedent("""\
        pipelines:
          - {name: greet-files, on: {event: watch.changed, from: watch}, steps: [{uses: _greet}]}
        """)
    w.write_config()
    text = (w.etc / "config.yaml").read_text().replace(
        "api: {enabled: false}",
        f"api: {{listen: 127.0.0.1:{port}, tokens: [{{name: compat, secret_ref: api-compat, scopes: ['*']}}]}}")
    (w.etc / "config.yaml").write_text(text)
    stored = w.run("vault", "set", "api-compat", input=TOKEN)
    assert stored.returncode == 0, stored.stderr
    w.port = port  # type: ignore[attr-defined]
    w.mode = request.param  # type: ignore[attr-defined]
    yield w
    destroy(w)


def run_json(world: World, plugin: str, command: str, payload: dict[str, Any]) -> dict[str, Any]:
    proc = world.plugin_run(plugin, payload, command=command)
    out = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


# -- through plugin run -------------------------------------------------------------------

def test_an_underscore_plugin_reads_its_handle_payload_from_the_api_trigger_envelope(world: World) -> None:
    out = run_json(world, "_greet", "handle", {"name": "Ada"})
    result = out["outcome"]["result"]
    uid = world.accounts["default"]
    assert result["greeting"] == "Hello, Ada!" and result["event_type"] == "api.trigger"
    assert result["uid"] == uid and out["account"]["name"] == "default"
    assert result["cwd"] == str(world.state_dir("default"))
    assert (world.state_dir("default") / "greeted.txt").read_text().splitlines()[-1] == "Ada"


def test_the_plugins_own_refusal_is_shown_with_its_log_lines(world: World) -> None:
    proc = world.run("plugin", "run", "_greet", "--command", "handle", "--payload", "{}")
    assert proc.returncode == 1
    assert "plugin error: no name in event.payload" in proc.stderr
    assert "event must include name" in proc.stderr and "null" not in proc.stdout


def test_a_sh_plugin_in_upstreams_echo_shape_runs_confined(world: World) -> None:
    for command, kind in (("handle", "api.trigger"), ("poll", "none")):
        out = run_json(world, "echo_sh", command, {})
        assert out["outcome"]["result"] == {"event": kind, "uid": str(world.accounts["untrusted"])}


def test_mirror_object_replaces_the_stored_state(world: World) -> None:
    run_json(world, "mirror", "poll", {"snapshot": {"day": 1, "species": ["wren"], "stale_cache": True}})
    second = run_json(world, "mirror", "poll", {"snapshot": {"day": 2, "species": ["robin"]}})
    assert second["outcome"]["result"]["state_seen"] == {"day": 1, "species": ["wren"], "stale_cache": True}
    third = run_json(world, "mirror", "poll", {"snapshot": {"day": 3}})
    assert third["outcome"]["result"]["state_seen"] == {"day": 2, "species": ["robin"]}  # no stale_cache left


def test_dedupe_keys_come_back_from_plugin_run(world: World) -> None:
    out = run_json(world, "watch", "poll", {})
    assert [(e["type"], e["dedupe_key"]) for e in out["events"]] == [("watch.changed", "file:a.csv"),
                                                                      ("watch.changed", "file:b.csv")]


# -- through serve, with upstream's client body ---------------------------------------------

@pytest.fixture(scope="module")
def serve(world: World):  # type: ignore[no-untyped-def]
    s = Serving(world, TOKEN)
    s.start(wait=True)
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def test_an_upstream_client_body_reaches_handle_as_event_payload_through_serve(world: World, serve: Serving) -> None:
    status, answer = serve.request("POST", "/plugin/_greet/handle", {"payload": {"name": "Grace"}})
    assert status == 202, answer
    job = serve.job(answer["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["greeting"] == "Hello, Grace!" and job["result"]["event_type"] == "api.trigger"
    assert job["payload"] == {"name": "Grace"} and job["uid"] == world.accounts["default"]


def test_routed_jobs_inherit_dedupe_keys_and_a_repeat_within_the_ttl_is_dropped(world: World, serve: Serving) -> None:
    first = serve.job(serve.request("POST", "/plugin/watch/poll", {})[1]["job_id"])
    assert first["status"] == "succeeded"

    def greeted() -> list[dict[str, Any]] | None:
        jobs = [j for j in serve.api_jobs("_greet") if j["parent_job_id"] == first["id"]]
        return jobs if len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs) else None

    jobs = wait_for("the two greetings", greeted, log=serve.log)
    assert sorted(j["result"]["dedupe_key"] for j in jobs) == ["file:a.csv", "file:b.csv"]
    assert sorted(j["event"]["dedupe_key"] for j in jobs) == ["file:a.csv", "file:b.csv"]
    second = serve.job(serve.request("POST", "/plugin/watch/poll", {})[1]["job_id"])
    assert not [j for j in serve.api_jobs("_greet") if j["parent_job_id"] == second["id"]]
    dropped = [e for e in second["events"] if e["type"] == "pipeline.deduplicated"]
    assert sorted(e["payload"]["dedupe_key"] for e in dropped) == ["file:a.csv", "file:b.csv"]
    assert {e["payload"]["first_job_id"] for e in dropped} == {j["id"] for j in jobs}
    stored = [e for e in second["events"] if e["type"] == "watch.changed"]
    assert sorted(e["dedupe_key"] for e in stored) == ["file:a.csv", "file:b.csv"]


def test_parallelism_loads_and_the_gateway_runs_the_not_concurrency_safe_plugin(world: World, serve: Serving) -> None:
    ids = [serve.request("POST", "/plugin/watch/poll", {})[1]["job_id"] for _ in range(3)]
    assert [serve.job(i)["status"] for i in ids] == ["succeeded"] * 3
    log = serve.log()
    assert "Traceback" not in log and "parallelism" not in log  # no unknown-key refusal, no warning


def test_mirror_object_through_serve(world: World, serve: Serving) -> None:
    serve.job(serve.request("POST", "/plugin/mirror/poll", {"snapshot": {"only": "this", "junk": 1}})[1]["job_id"])
    serve.job(serve.request("POST", "/plugin/mirror/poll", {"snapshot": {"only": "that"}})[1]["job_id"])
    last = serve.job(serve.request("POST", "/plugin/mirror/poll", {"snapshot": {}})[1]["job_id"])
    assert last["result"]["state_seen"] == {"only": "that"}


def test_nothing_outlived_its_job(world: World, serve: Serving) -> None:
    from wallworld import live_processes

    for uid in world.accounts.values():
        assert live_processes(uid) == [], live_processes(uid)
