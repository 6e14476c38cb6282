"""The job ledger: list jobs, show one job's attempts, transitions and result."""

from __future__ import annotations

import json

import click

from ductile.cliopts import config_option, json_option
from ductile.state.schema import JOB_STATUSES


@click.group()
def job() -> None:
    """The job ledger: list jobs, show one job's attempts, transitions and result."""


@job.command("list")
@config_option
@json_option
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None, help="Only jobs in this state.")
@click.option("--plugin", metavar="NAME", default=None, help="Only jobs of this plugin.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="How many jobs, newest first.")
def list_(config_path: str | None, as_json: bool, status: str | None, plugin: str | None, limit: int) -> None:
    """List jobs, newest first: summaries without payload or result (`job show ID` has them)."""
    from ductile.render import emit_json, say, table
    from ductile.state.ledger import open_ledger

    with open_ledger(config_path) as db:
        jobs = db.jobs.summaries(status=status, plugin=plugin, limit=limit)
    if as_json:
        emit_json([j.as_dict() for j in jobs])
        return
    if not jobs:
        say("no jobs" + (f" with status {status}" if status else "") + (f" for plugin {plugin}" if plugin else ""),
            err=False)
        return
    table(["id", "plugin", "command", "status", "attempt", "created", "last error"],
          [(j.id, j.plugin, j.command, j.status, f"{j.attempt}/{j.max_attempts}", j.as_dict()["created_at"],
            _first_line(j.last_error, 60)) for j in jobs])


@job.command("show")
@click.argument("job_id", metavar="ID")
@config_option
@json_option
def show(job_id: str, config_path: str | None, as_json: bool) -> None:
    """Show one job (ID or a unique prefix): status, attempts, transitions, events, result."""
    from ductile.render import emit_json, say, table
    from ductile.state.ledger import job_report, open_ledger

    with open_ledger(config_path) as db:
        report = job_report(db, job_id)
    if as_json:
        emit_json(report)
        return
    j = report["job"]
    account = j["account"] if j["uid"] is None else f"{j['account']} (uid {j['uid']})"
    fields = [("job", j["id"]), ("plugin", j["plugin"]), ("command", j["command"]), ("status", j["status"]),
              ("trigger", j.get("trigger")),
              ("attempt", f"{j['attempt']}/{j['max_attempts']}"), ("created", j["created_at"]),
              ("started", j["started_at"]), ("finished", j["finished_at"]),
              ("next attempt", j["next_attempt_at"] if j["status"] == "queued" else None),
              ("account", account), ("parent", j["parent_job_id"]), ("event depth", j["event_depth"] or None),
              ("dedupe key", j["dedupe_key"]), ("last error", j["last_error"])]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value is not None:
            say(f"{key.ljust(width)}  {value}", err=False)
    if j.get("warnings"):
        say("warnings:", err=False)
        for warning in j["warnings"]:
            say(f"  - {warning}", err=False)
    say("", err=False)
    table(["attempt", "outcome", "exit", "account", "uid", "started", "finished", "error"],
          [(a["attempt"], a["outcome"], a["exit_code"], a["account"], a["uid"], a["started_at"], a["finished_at"],
            _first_line(a["error"], 60)) for a in report["attempts"]], title="attempts:")
    say("", err=False)
    table(["at", "from", "to", "reason"],
          [(t["at"], t["from"] or "-", t["to"], t["reason"]) for t in report["transitions"]], title="transitions:")
    if report["events"]:
        say("", err=False)
        table(["at", "type", "depth"], [(e["created_at"], e["type"], e["depth"]) for e in report["events"]],
              title="events:")
    say("", err=False)
    say("payload:", err=False)
    say(json.dumps(j["payload"], indent=2), err=False)
    if j["result"] is not None:
        say("result:", err=False)
        say(json.dumps(j["result"], indent=2), err=False)
    if j["stderr_tail"]:
        say("stderr (tail of the last attempt):", err=False)
        say(j["stderr_tail"].rstrip("\n"), err=False)


def _first_line(text: str | None, limit: int) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
