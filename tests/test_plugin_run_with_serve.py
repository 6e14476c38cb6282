"""``plugin run`` beside a running ``serve``: a plugin that is not safe to run twice is never
run twice — one refuses with the job that holds it, the other waits its turn — and a
``plugin run`` killed mid-job does not hold the plugin for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import assert_one_line_error, run_ductile
from servehelp import ServeWorld, make_serve_world, wait_for
from test_faults_serve import GATE

from ductile.state import open_state
from ductile.state.owner import is_alive, process_token

TOKEN = "solo-token-" + "c9" * 16


@pytest.fixture
def solo(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = make_serve_world(tmp_path, textwrap.dedent("""\
        service: {unconfined: true, max_workers: 2, shutdown_timeout: 10s, kill_grace: 1s}
        api:
          listen: 127.0.0.1:@PORT@
          tokens: [{name: ops, secret_ref: api-ops, scopes: ["*"]}]
        plugins:
          solo: {retry: {max_attempts: 1}}
        """), {"solo": GATE}, secrets={"api-ops": TOKEN})
    manifest = w.plugins / "solo" / "manifest.yaml"
    manifest.write_text(manifest.read_text() + "concurrency_safe: false\n")
    yield w
    w.kill()


def _cli_run(w: ServeWorld, payload: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "DUCTILE_DEBUG"}
    return subprocess.Popen([sys.executable, "-m", "ductile", "plugin", "run", "solo", "--json", "--payload",
                             json.dumps(payload), "--config", str(w.etc)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_plugin_run_is_refused_while_serve_runs_the_solo_plugin_and_serve_waits_for_plugin_run(
        solo: ServeWorld, tmp_path: Path) -> None:
    w = solo
    w.start()
    started, go = tmp_path / "served", tmp_path / "go-served"
    served = w.trigger("solo", "poll", {"started": str(started), "go": str(go)}, TOKEN)
    wait_for("serve's solo job to start", started.exists, log=w.log)
    mine = tmp_path / "mine"
    proc = run_ductile("plugin", "run", "solo", "--payload", json.dumps({"started": str(mine), "go": str(go)}),
                       "--config", str(w.etc))
    line = assert_one_line_error(proc, served, "one job at a time")
    assert "ductile job show" in line and not mine.exists()  # refused before anything ran
    go.touch()
    assert w.wait_job(served, TOKEN)["status"] == "succeeded"

    started2, go2 = tmp_path / "cli", tmp_path / "go-cli"
    cli = _cli_run(w, {"started": str(started2), "go": str(go2)})
    try:
        wait_for("plugin run's job to start", lambda: started2.exists() and started2.read_text(), log=w.log)
        cli_job = started2.read_text()
        queued = w.trigger("solo", "poll", {"started": str(tmp_path / "s3"), "go": str(go2)}, TOKEN)
        listed = {j["id"]: j for j in w.request("GET", "/jobs?plugin=solo", token=TOKEN)[1]["jobs"]}
        assert listed[cli_job]["status"] == "running"  # plugin run's job is in serve's ledger
        time.sleep(1.5)  # an observation window for an overlap that must not happen, not a timing assertion
        assert w.job(queued, TOKEN)["status"] == "queued" and not (tmp_path / "s3").exists()
        go2.touch()
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        assert json.loads(out)["job_id"] == cli_job
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    done = w.wait_job(queued, TOKEN)
    assert done["status"] == "succeeded"
    shown = run_ductile("job", "show", cli_job, "--json", "--config", str(w.etc))
    job = json.loads(shown.stdout)["job"]
    assert job["status"] == "succeeded" and job["result"] == {"gated": True}
    assert w.stop() == 0


def test_serve_booting_leaves_a_live_plugin_run_its_job(solo: ServeWorld, tmp_path: Path) -> None:
    w = solo
    started, go = tmp_path / "cli", tmp_path / "go"
    cli = _cli_run(w, {"started": str(started), "go": str(go)})
    try:
        wait_for("plugin run's job to start", lambda: started.exists() and started.read_text())
        w.start()  # its boot recovers jobs a crash left running: not this one, its holder lives
        job = w.job(started.read_text(), TOKEN)
        assert job["status"] == "running" and job["attempts"][0]["outcome"] == "running"
        go.touch()
        _, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert w.job(started.read_text(), TOKEN)["status"] == "succeeded"
    assert w.stop() == 0


def test_a_killed_plugin_run_does_not_hold_its_plugin(solo: ServeWorld, tmp_path: Path) -> None:
    w = solo
    started = tmp_path / "cli"
    cli = _cli_run(w, {"started": str(started), "go": str(tmp_path / "never")})
    wait_for("plugin run's job to start", lambda: started.exists() and started.read_text())
    job_id = started.read_text()
    token = (open_state(str(w.db), create=False).jobs.get(job_id) or pytest.fail("no job")).claimed_by
    assert token is not None and is_alive(token)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    assert not is_alive(token)
    for p in psutil.process_iter(["cmdline"], ad_value=None):  # its orphaned plugin, by pid
        if any(str(w.plugins) in (arg or "") for arg in (p.info["cmdline"] or [])):
            p.kill()
    with open_state(str(w.db)) as db:
        assert db.jobs.recover_orphans(is_alive) == [(job_id, "dead")]  # what serve's maintenance does
        assert db.jobs.recover_orphans(is_alive) == []
        assert db.jobs.start_now("solo", "poll", {}, limit=1, claimed_by=process_token()) is not None
    assert is_alive(process_token()) and is_alive("not a token")  # unreadable: never taken away
