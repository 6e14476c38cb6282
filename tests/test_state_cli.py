"""``ductile job list`` and ``ductile job show``: plain lines, --json, refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_ductile

from ductile.state import open_state
from ductile.state.jobs import Retry, Succeeded


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """A config pointing at a state database holding one finished and one queued job."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "config.yaml").write_text("plugin_roots: [plugins]\nstate: {path: state/ductile.db}\n")
    with open_state(str(tmp_path / "state" / "ductile.db")) as db:
        done = db.jobs.enqueue("echo", "poll", {"message": "hi"}, max_attempts=3)
        db.jobs.claim_next(time.time())
        db.jobs.finish(done, Retry("upstream said 503\nretry later", time.time()), exit_code=1,
                       account="default", uid=61001, stderr_tail="first try\n")
        db.jobs.claim_next(time.time())
        db.events.record_event("echo.done", {"n": 1}, source_job_id=done, plugin="echo")
        db.jobs.finish(done, Succeeded({"greeting": "hello"}), exit_code=0, account="default", uid=61001,
                       stderr_tail="warming up\nall good\n")
        waiting = db.jobs.enqueue("notify", "handle", {}, max_attempts=1, parent_job_id=done, event_depth=1)
    return {"config": str(tmp_path), "done": done, "waiting": waiting, "db": str(tmp_path / "state" / "ductile.db")}


def test_list_plain(world: dict[str, str]) -> None:
    proc = run_ductile("job", "list", "--config", world["config"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "PLUGIN", "COMMAND", "STATUS", "ATTEMPT"]
    assert lines[1].split()[:5] == [world["waiting"], "notify", "handle", "queued", "0/1"]  # newest first
    assert lines[2].split()[:5] == [world["done"], "echo", "poll", "succeeded", "2/3"]
    assert len(lines) == 3


def test_list_filters(world: dict[str, str]) -> None:
    proc = run_ductile("job", "list", "--config", world["config"], "--status", "succeeded", "--json")
    assert [j["id"] for j in json.loads(proc.stdout)] == [world["done"]]
    proc = run_ductile("job", "list", "--config", world["config"], "--plugin", "notify", "--json")
    assert [j["id"] for j in json.loads(proc.stdout)] == [world["waiting"]]
    proc = run_ductile("job", "list", "--config", world["config"], "--limit", "1", "--json")
    assert [j["id"] for j in json.loads(proc.stdout)] == [world["waiting"]]
    proc = run_ductile("job", "list", "--config", world["config"], "--status", "dead")
    assert proc.returncode == 0 and proc.stdout.strip() == "no jobs with status dead"
    proc = run_ductile("job", "list", "--config", world["config"], "--status", "exploded")
    assert proc.returncode == 2 and "exploded" in proc.stderr


def test_list_json(world: dict[str, str]) -> None:
    proc = run_ductile("job", "list", "--config", world["config"], "--json")
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)
    assert [j["id"] for j in jobs] == [world["waiting"], world["done"]]
    done = jobs[1]
    assert done["status"] == "succeeded" and done["attempt"] == 2
    assert not {"payload", "event", "result", "stderr_tail"} & set(done)  # summaries; `job show` has the rest
    assert done["created_at"].endswith("Z") and done["account"] == "default" and done["uid"] == 61001
    assert jobs[0]["parent_job_id"] == world["done"] and jobs[0]["event_depth"] == 1


def test_show_plain(world: dict[str, str]) -> None:
    proc = run_ductile("job", "show", world["done"], "--config", world["config"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"job           {world['done']}" in out
    assert "status        succeeded" in out and "attempt       2/3" in out
    assert "account       default (uid 61001)" in out
    attempts = out.split("attempts:", 1)[1].split("transitions:", 1)[0].splitlines()
    assert attempts[1].split()[:5] == ["ATTEMPT", "OUTCOME", "EXIT", "ACCOUNT", "UID"]
    assert attempts[2].split()[:5] == ["1", "retry", "1", "default", "61001"]
    assert attempts[2].split()[-3:] == ["upstream", "said", "503"]  # first line of the error only
    assert attempts[3].split()[:5] == ["2", "succeeded", "0", "default", "61001"]
    transitions = out.split("transitions:", 1)[1].split("events:", 1)[0]
    reasons = [ln.split()[-1] for ln in transitions.splitlines()[2:] if ln.strip()]
    assert reasons == ["enqueued", "claimed", "retry_scheduled", "claimed", "succeeded"]
    assert "echo.done" in out.split("events:", 1)[1]
    assert '"greeting": "hello"' in out.split("result:", 1)[1]
    assert out.rstrip().endswith("warming up\nall good")


def test_show_json(world: dict[str, str]) -> None:
    proc = run_ductile("job", "show", world["done"][:10], "--config", world["config"], "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"job", "attempts", "transitions", "events", "chain"}
    chain = report["chain"]  # a root job; its echo.done started the notify step
    assert chain["ancestors"] == [] and [(c["plugin"], c["parent_job_id"]) for c in chain["children"]] == [
        ("notify", world["done"])]
    assert report["job"]["id"] == world["done"] and report["job"]["stderr_tail"] == "warming up\nall good\n"
    assert [(a["attempt"], a["outcome"], a["exit_code"], a["account"], a["uid"]) for a in report["attempts"]] == [
        (1, "retry", 1, "default", 61001), (2, "succeeded", 0, "default", 61001)]
    assert report["attempts"][0]["stderr_tail"] == "first try\n"
    assert [t["to"] for t in report["transitions"]] == ["queued", "running", "queued", "running", "succeeded"]
    assert [e["type"] for e in report["events"]] == ["echo.done"]


def test_show_unknown_job_is_one_line(world: dict[str, str]) -> None:
    proc = run_ductile("job", "show", "ffffffff-nope", "--config", world["config"])
    assert_one_line_error(proc, "ffffffff-nope", "no such job", "fix:")


def test_missing_database_is_refused_and_not_created(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("plugin_roots: [plugins]\nstate: {path: state/ductile.db}\n")
    for args in (["list"], ["show", "abc"]):
        proc = run_ductile("job", *args, "--config", str(tmp_path))
        assert_one_line_error(proc, "config.yaml", "state.path", "does not exist", "fix:")
    assert not (tmp_path / "state").exists()


def test_job_help_lists_both_commands() -> None:
    proc = run_ductile("job", "--help")
    assert proc.returncode == 0
    assert "list" in proc.stdout and "show" in proc.stdout
