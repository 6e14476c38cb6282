"""Attacks on a running ``ductile serve``, over real HTTP, by hostile clients and plugins
(issue #11). Each test is the attack; it passes when the attack fails."""

from __future__ import annotations

import json

import pytest

from servehelp import ECHO, ServeWorld, make_serve_world

from ductile.serve.signatures import sign

OPS = "ops-token-" + "d4" * 16
HOOK_KEY = "hook-key-" + "e5" * 16

CONFIG = """\
    service: {unconfined: true, max_workers: 2, shutdown_timeout: 5s}
    plugins:
      echo: {retry: {max_attempts: 1}}
    api:
      listen: 127.0.0.1:@PORT@
      tokens:
        - {name: ops, secret_ref: api-ops, scopes: ["*"]}
    webhooks:
      - {path: /hooks/echo, plugin: echo, secret_ref: echo-hook}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ServeWorld:
    w = make_serve_world(tmp_path_factory.mktemp("hostile"), CONFIG, {"echo": ECHO},
                         secrets={"api-ops": OPS, "echo-hook": HOOK_KEY})
    w.start()
    yield w
    code = w.stop()
    assert code == 0, w.log()[-3000:]


def jobs_of(world: ServeWorld, plugin: str) -> list[dict]:
    status, body = world.request("GET", f"/jobs?plugin={plugin}&limit=1000", token=OPS)
    assert status == 200, body
    return list(body["jobs"])


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
