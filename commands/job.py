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
@click.option("--since", metavar="WHEN", default=None,
              help="Only jobs created at or after WHEN: an age (2h, 7d), a date, or an RFC 3339 time.")
@click.option("--until", metavar="WHEN", default=None, help="Only jobs created before WHEN (same forms as --since).")
@click.option("--search", metavar="TEXT", default=None,
              help="Only jobs whose last error or stderr tail contains TEXT (case-insensitive).")
def list_(config_path: str | None, as_json: bool, status: str | None, plugin: str | None, limit: int,
          since: str | None, until: str | None, search: str | None) -> None:
    """List jobs, newest first: summaries without payload or result (`job show ID` has them)."""
    import time

    from ductile.render import emit_json, say, table
    from ductile.state.ledger import open_ledger

    now = time.time()
    bounds = {name: _when(value, now, f"--{name}") for name, value in (("since", since), ("until", until))}
    with open_ledger(config_path) as db:
        jobs = db.jobs.summaries(status=status, plugin=plugin, limit=limit, search=search or None, **bounds)
    if as_json:
        emit_json([j.as_dict() for j in jobs])
        return
    if not jobs:
        say("no jobs" + (f" with status {status}" if status else "") + (f" for plugin {plugin}" if plugin else "")
            + (" in that time" if since or until else "") + (f" matching {search!r}" if search else ""), err=False)
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
    chain = report.get("chain") or {}
    if chain.get("ancestors") or chain.get("children"):
        say("", err=False)
        rows = [("parent" if i == 0 else "  " * i + "above", a["id"], a["plugin"], a["command"], a["status"],
                 a.get("trigger") or "") for i, a in enumerate(chain.get("ancestors", []))]
        rows += [("started", c["id"], c["plugin"], c["command"], c["status"], c.get("trigger") or "")
                 for c in chain.get("children", [])]
        table(["", "job", "plugin", "command", "status", "trigger"], rows, title="chain:")
    say("", err=False)
    say("payload:", err=False)
    say(json.dumps(j["payload"], indent=2), err=False)
    if j["result"] is not None:
        say("result:", err=False)
        say(json.dumps(j["result"], indent=2), err=False)
    if j["stderr_tail"]:
        say("stderr (tail of the last attempt):", err=False)
        say(j["stderr_tail"].rstrip("\n"), err=False)


@job.command("prune")
@config_option
@json_option
@click.option("--older-than", "older_than", metavar="AGE", default=None,
              help="Prune finished jobs older than AGE (e.g. 30d, 12h); default: state.retention.jobs.")
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
def prune(config_path: str | None, as_json: bool, older_than: str | None, dry_run: bool) -> None:
    """Prune the ledger by age: finished jobs, events, audit rows, expired dedupe keys.

    The same rules and small batches serve uses (state.retention): queued and running
    jobs are never pruned, an event a kept job needs is kept. Safe while serve runs: each
    batch is a short transaction, so the gateway keeps answering and recording jobs.
    """
    import time

    from ductile.config import load_config
    from ductile.config.units import parse_duration
    from ductile.render import emit_json, say
    from ductile.state.ledger import open_ledger
    from ductile.state.retention import Retention, cutoffs

    policy = load_config(config_path).config.state.retention
    jobs_age = policy.jobs
    if older_than is not None:
        try:
            jobs_age = parse_duration(older_than)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--older-than") from None
    cut = cutoffs(jobs_age, policy.events, policy.audit, time.time())
    with open_ledger(config_path, write=not dry_run) as db:
        counted = Retention(db).count(cut) if dry_run else Retention(db).prune(cut)
    if as_json:
        emit_json({"dry_run": dry_run, **counted.as_dict()})
        return
    verb = "would prune" if dry_run else "pruned"
    say(f"{verb} {counted.jobs} job(s), {counted.events} event(s), {counted.audit} audit row(s), "
        f"{counted.dedupe_keys} expired dedupe key(s)", err=False)


def _when(text: str | None, now: float, option: str) -> float | None:
    if text is None:
        return None
    from ductile.config.units import parse_when

    try:
        return parse_when(text, now)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint=option) from None


def _first_line(text: str | None, limit: int) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
