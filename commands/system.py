"""Back up and restore the gateway, ask the running gateway how it is, reload it, check the state.

Thin by design: the backup plan, the archive, restore, status and selfcheck live in
``ductile.system``; this module parses options and renders. Backup and restore run as the
gateway user (or root), like the vault commands, and say so when run as anyone else.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ductile.cliopts import config_option, json_option
from ductile.config.units import format_size

if TYPE_CHECKING:
    from ductile.config import LoadedConfig
    from ductile.system.plan import BackupPlan

SCOPE_CHOICES = ("db", "config", "plugins", "all")  # ductile.system.plan.SCOPES, without importing it for --help
TTY_PROGRESS_BYTES = 8 * 1024 * 1024


@click.group()
def system() -> None:
    """Back up and restore the gateway, ask the running gateway how it is, reload it, check the state."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _as_gateway_user(loaded: LoadedConfig, command: str) -> None:
    """Refuse anyone but the gateway user and root, naming who the gateway user is."""
    import os

    from ductile.system.backup import gateway_owner, user_name
    from ductile.system.gather import BackupError, paths_of

    found = gateway_owner(paths_of(loaded))
    euid = os.geteuid()
    if found is None or euid in (0, found[0]):
        return
    owner = found[0]
    name = user_name(owner)
    raise BackupError(f"`ductile system {command}` runs as the gateway user {name} (uid {owner}, the owner of the "
                      f"state database), not as uid {euid}", where=loaded.path,
                      fix=f"sudo -u {name} ductile system {command} ...")


def _print_plan(plan: BackupPlan, dest: str, config: str) -> None:
    click.echo(f"backup of {config}, scope {plan.scope} -> {dest}")
    click.echo("INCLUDED")
    for src in plan.sources:
        members = [m for m in plan.members if m.arcname == src.arcroot or m.arcname.startswith(src.arcroot + "/")]
        if not members:
            continue
        if src.tree:
            files = [m for m in members if m.kind == "file"]
            click.echo(f"  {src.arcroot}/  <- {src.path} ({_count(len(files), 'file')}, "
                       f"{format_size(sum(m.size for m in files))})")
        else:
            extra = " (consistent snapshot)" if src.role == "db" else ""
            click.echo(f"  {src.arcroot}  <- {src.path}{extra}")
    _section("EXCLUDED", [f"{path}: {reason}" for path, reason in plan.excluded], always=True)
    _section("WARNINGS", plan.warnings)


def _section(title: str, lines: Any, *, always: bool = False) -> None:
    """A capitalised heading and its indented lines; nothing at all for no lines (unless ``always``)."""
    if lines or always:
        click.echo(title)
    for line in lines:
        click.echo(f"  {line}")


@system.command("backup")
@click.option("--to", "to", required=True, metavar="FILE|DIR",
              help="Archive to create (never over an existing file), or a directory to create a named one in.")
@click.option("--scope", type=click.Choice(SCOPE_CHOICES), default="config", show_default=True,
              help="db < config < plugins < all: each adds to the one before.")
@click.option("--keep", type=click.IntRange(min=1), default=None, metavar="N",
              help="With a directory --to: keep the N newest archives of this scope, remove older ones.")
@config_option
@json_option
def backup(to: str, scope: str, keep: int | None, config_path: str | None, as_json: bool) -> None:
    """Archive the state database, config, vault and plugins as tar.gz; never the age key.

    Prints what will be included and excluded (with reasons) before writing; the archive is
    created exclusively with mode 0600, and any failure leaves no partial file. The pairing
    code printed at the end says which age key opens the archive's vault: write it next to
    the key.
    """
    import os

    from ductile.config import load_config
    from ductile.render import emit_json, is_tty
    from ductile.system.backup import run_backup

    loaded = load_config(config_path)
    _as_gateway_user(loaded, "backup")
    if os.geteuid() == 0 and not as_json:
        click.echo("note: running as root, not as the gateway user: the archive will belong to root", err=True)
    bar: Any = None

    def on_plan(plan: BackupPlan, dest: str) -> None:
        nonlocal bar
        if not as_json:
            _print_plan(plan, dest, loaded.path)
        if not as_json and is_tty(sys.stderr) and plan.total_bytes >= TTY_PROGRESS_BYTES:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            from ductile.render import console

            bar = Progress(TextColumn("archiving"), BarColumn(), DownloadColumn(), console=console(stderr=True),
                           transient=True)
            bar.start()
            bar.add_task("archive", total=plan.total_bytes)

    def progress(done: int, _member: str) -> None:
        if bar is not None:
            bar.update(bar.task_ids[0], completed=done)

    try:
        result = run_backup(loaded, scope, to, keep=keep, on_plan=on_plan, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        emit_json({**result.manifest, "archive": result.archive, "pruned": list(result.pruned)})
        return
    files = result.plan.files
    click.echo(f"wrote {result.archive} ({_count(len(files), 'file')}, {format_size(sum(m.size for m in files))} before "
               f"compression, mode 0600)")
    for path in result.pruned:
        click.echo(f"removed {path} (--keep {keep})")
    code = result.plan.pairing_code
    if code:
        click.echo(f"pairing code {code}: write it next to the offline copy of the age key; it names the key "
                   "that opens this archive's vault")
    else:
        click.echo("no pairing code: the age key could not be read")


@system.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, readable=False))
@click.option("--to", "to_dir", metavar="DIR", default=None,
              help="Restore below DIR (DIR + each original path) instead of to the original paths.")
@click.option("--dry-run", is_flag=True, help="Verify the archive and print what would be written; write nothing.")
@click.option("--force", is_flag=True, help="Replace files that exist with other contents, keeping each as .bak.")
@click.option("--owner", metavar="USER[:GROUP]", default=None,
              help="Give the secret surface to USER (default: the user running the restore, or as root the "
                   "owner of the state directory).")
@click.option("--max-size", "max_size", metavar="SIZE", default=None,
              help="Refuse archives holding more than SIZE bytes in all (default 64GiB; accepts KiB/MiB/GiB).")
@json_option
def restore(archive: str, to_dir: str | None, dry_run: bool, force: bool, owner: str | None, max_size: str | None,
            as_json: bool) -> None:
    """Verify ARCHIVE completely, then restore it with the layout's owners and modes.

    Every member is checked against the manifest before anything is written; links,
    devices, absolute or climbing names and oversized archives are refused. A state
    database held by a running gateway is never replaced. Existing files are kept unless
    --force, which keeps them as .bak. The age key is never in an archive: put it back
    afterwards (the pairing code says which key).
    """
    from ductile.render import emit_json
    from ductile.system.manifest import Limits
    from ductile.system.restore import run_restore

    limits = Limits()
    if max_size is not None:
        from ductile.config.units import parse_size

        try:
            limits = Limits(max_bytes=parse_size(max_size))
        except (ValueError, TypeError) as err:
            raise click.BadParameter(str(err), param_hint="--max-size") from None
    result = run_restore(archive, to_dir=to_dir, dry_run=dry_run, force=force, owner=owner, limits=limits)
    if as_json:
        emit_json(_restore_json(result))
        if dry_run and not result.plan.ok:
            raise click.exceptions.Exit(1)
        return
    _print_restore(result)
    if dry_run and not result.plan.ok:
        raise click.exceptions.Exit(1)


def _restore_json(result: Any) -> dict[str, Any]:
    m, plan = result.manifest, result.plan
    return {
        "archive": result.archive, "dry_run": result.dry_run, "ok": plan.ok,
        "manifest": {"scope": m.scope, "created_at": m.created_at, "hostname": m.hostname, "ductile_version": m.version,
                     "backup_uid": m.backup_uid, "members": len(m.members)},
        "owner": {"uid": plan.gateway[0], "gid": plan.gateway[1], "from": result.owner_from},
        "steps": [{"action": s.action, "path": s.dest, "member": s.member.path, "mode": f"{s.mode:04o}",
                   "uid": s.uid, "gid": s.gid} for s in plan.steps],
        "refused": list(plan.refusals), "notes": list(plan.notes),
        "kept": [{"path": a, "bak": b} for a, b in result.kept], "created_dirs": list(result.created_dirs),
        "checks": result.checks, "next_steps": _next_steps(result),
    }


def _next_steps(result: Any) -> list[str]:
    import os

    from ductile.system.gather import secret_zero
    from ductile.system.restore import destination

    m = result.manifest
    key = destination(m.age_key_file, result.plan.to_dir)
    code = m.backup_uid
    steps = []
    present = secret_zero(key).pairing_code if os.path.lexists(key) else None
    uid, gid = result.plan.gateway
    which = f"the key whose pairing code is {code}" if code else "the key this vault was made with"
    if present and code and present == code:
        steps.append(f"the age key at {key} has pairing code {present}: it is the key that opens this archive's vault")
    elif present:
        steps.append(f"the age key at {key} has pairing code {present}, not {code}: it does not open this archive's "
                     f"vault; put back {which}")
    else:
        steps.append(f"put the age key back at {key} (mode 0600, owner uid {uid} gid {gid}): {which}")
    config = destination(m.config_file, result.plan.to_dir)
    if result.plan.to_dir:
        steps.append(f"the files are below {result.plan.to_dir}; move them to their paths, then run "
                     f"ductile system selfcheck --config {m.config_file}")
    else:
        steps.append(f"check: ductile system selfcheck --config {config}")
        steps.append(f"start the gateway: systemctl start ductile (or ductile serve --config {config})")
    return steps


def _print_restore(result: Any) -> None:
    m, plan = result.manifest, result.plan
    click.echo(f"archive {result.archive}: scope {m.scope}, made {m.created_at} on {m.hostname} by ductile "
               f"{m.version}, pairing code {m.backup_uid or 'none'}")
    files = m.files
    click.echo(f"verified: {len(m.members)} members, {format_size(sum(f.size for f in files))}; every sha256 matches "
               "the manifest")
    click.echo(f"secret surface owner: uid {plan.gateway[0]} gid {plan.gateway[1]} ({result.owner_from})")
    for note in plan.notes:
        click.echo(f"note: {note}")
    title = "PLAN (dry run: nothing written)" if result.dry_run else "WRITTEN"
    click.echo(title)
    same = 0
    for s in plan.steps:
        if s.action in ("same", "exists"):
            same += 1
            continue
        click.echo(f"  {s.action:<8} {s.dest}  {s.mode:04o} {s.uid}:{s.gid}")
    if same:
        click.echo(f"  ({same} already in place with the same contents, left alone)")
    for path, bak in result.kept:
        click.echo(f"  kept     {path} as {bak}")
    _section("REFUSED (nothing will be written while any remain)", plan.refusals)
    if result.checks:
        _print_checks(result.checks)
    if not result.dry_run:
        click.echo("NEXT")
        for i, step in enumerate(_next_steps(result), 1):
            click.echo(f"  {i}. {step}")


def _print_checks(checks: Any) -> None:
    click.echo("CHECKS")
    if "skipped" in checks:
        click.echo(f"  skipped: {checks['skipped']}")
        return
    doctor = checks.get("doctor") or {}
    if "counts" in doctor:
        c = doctor["counts"]
        click.echo(f"  doctor: {c.get('error', 0)} error(s), {c.get('warning', 0)} warning(s)")
        for f in doctor.get("findings", []):
            if f.get("severity") == "error":
                click.echo(f"    error: {f.get('message')}" + (f" (fix: {f['fix']})" if f.get("fix") else ""))
    else:
        click.echo(f"  doctor: could not run: {doctor.get('error', '?')}")
    selfcheck = checks.get("selfcheck") or {}
    for c in selfcheck.get("checks", []):
        click.echo(f"  {c['check']}: {c['status']}: {c['detail']}")
    if "checks" not in selfcheck:
        click.echo(f"  selfcheck: could not run: {selfcheck.get('error', '?')}")


@system.command("status")
@config_option
@json_option
def status(config_path: str | None, as_json: bool) -> None:
    """Ask the running gateway how it is: pid, since, posture, containment, queue, last job, RSS.

    Exit 0 when the gateway answered, 1 when one runs but its control channel did not
    answer (or is not yours to use), 3 when no gateway runs for this config.
    """
    from ductile.config import load_config
    from ductile.render import emit_json
    from ductile.system.status import gateway_status

    loaded = load_config(config_path)
    code, report = gateway_status(loaded)
    if as_json:
        emit_json(report)
    elif report.get("answered"):
        last = report.get("last_job") or {}
        rows = [
            ("gateway", f"running, pid {report['pid']}, since {report['since']} ({report['status']})"),
            ("posture", report["posture_line"]),
            ("containment", report.get("containment") or "not reported by this gateway"),
            ("api", report["api"]),
            ("queue", f"{report['queue_depth']} queued, {report['running_jobs']} running"),
            ("last job", f"{last['id']} {last['plugin']}.{last['command']} {last['status']} at {last['finished_at']}"
             if last else "none yet"),
            ("breakers", ", ".join(f"{b['plugin']} {b['state']} until {b['retry_at']}" if b["retry_at"] else
                                   f"{b['plugin']} {b['state']}" for b in report.get("breakers", [])) or "all closed"),
            ("reloads", _reloads(report.get("reloads"))),
            ("memory", f"{format_size(report['rss_bytes'])} RSS, {report['threads']} threads"),
            ("uptime", f"{report['uptime_seconds']:.0f}s"),
            ("config", report["config"]),
        ]
        for key, value in rows:
            click.echo(f"{key:<12} {value}")
    elif report.get("running"):
        click.echo(f"gateway running (pid {report['pid']}) but it did not answer: {report['error']} "
                   f"(fix: {report['fix']})")
    else:
        click.echo(f"no gateway is running for {report['config']} ({report['detail']})")
        if "queue_depth" in report:
            click.echo(f"ledger: {report['queue_depth']} job(s) queued, {report['jobs_marked_running']} marked "
                       "running")
    if code:
        raise click.exceptions.Exit(code)


@system.command("reload")
@config_option
@json_option
def reload(config_path: str | None, as_json: bool) -> None:
    """Reload the running gateway: re-read the config, plugins, tokens and webhook keys.

    The gateway swaps its runtime only when the whole new config is good; running jobs
    finish on the old one. Exit 0 reloaded, 1 refused (the running config is kept; the
    reason is printed), 2 the change needs a restart (listen address, state path,
    accounts...), 3 no gateway runs for this config.
    """
    from ductile.config import load_config
    from ductile.render import emit_json
    from ductile.system.status import gateway_reload

    loaded = load_config(config_path)
    code, report = gateway_reload(loaded)
    if as_json:
        emit_json(report)
    elif code == 0:
        click.echo(f"{report['message']} (generation {report['generation']})")
    else:
        fix = f" (fix: {report['fix']})" if report.get("fix") else ""
        click.echo(f"not reloaded: {report['message']}{fix}", err=True)
    if code:
        raise click.exceptions.Exit(code)


@system.command("breaker")
@click.argument("plugin", required=False)
@click.option("--reset", is_flag=True, help="Close the breaker (of PLUGIN, or every one): its schedules run again.")
@config_option
@json_option
def breaker(plugin: str | None, reset: bool, config_path: str | None, as_json: bool) -> None:
    """Show the circuit breakers of scheduled runs, or --reset one (or all).

    A breaker opens after plugins.<name>.breaker.threshold consecutive failed scheduled runs
    and pauses the plugin's schedules for reset_after, then lets one run try. Asks the
    running gateway; with none running, reads the state database.
    """
    from ductile.config import load_config
    from ductile.render import emit_json, table
    from ductile.system.status import gateway_breakers

    loaded = load_config(config_path)
    _code, report = gateway_breakers(loaded, plugin, reset)
    if as_json:
        emit_json(report)
        return
    for name in report["reset"]:
        click.echo(f"reset the breaker of {name}: its schedules run again")
    rows = [(b["plugin"], b["state"], f"{b['failures']}/{b['threshold'] if b['threshold'] else 'off'}",
             b["retry_at"] or "", (b["last_error"] or "")[:60]) for b in report["breakers"]]
    if not rows:
        click.echo("no plugin has schedules, so no breaker applies")
        return
    table(["plugin", "state", "failures", "retry at", "last error"], rows)


@system.command("selfcheck")
@config_option
@json_option
def selfcheck(config_path: str | None, as_json: bool) -> None:
    """Check the database (integrity, schema), jobs stuck running, the vault and the locks.

    Read-only. Runs as the gateway user (as root, it first becomes that user). Exit 1 on any
    problem; a check that could not run is shown as skipped, never as ok.
    """
    import os

    from ductile.config import load_config
    from ductile.render import emit_json, table
    from ductile.system.backup import gateway_owner, user_name
    from ductile.system.gather import paths_of
    from ductile.system.selfcheck import run_selfcheck

    loaded = load_config(config_path)
    owner = gateway_owner(paths_of(loaded))
    if os.geteuid() == 0 and owner is not None and owner[0] != 0:
        _become(*owner)
    else:
        _as_gateway_user(loaded, "selfcheck")
    checks = run_selfcheck(loaded)
    problems = [c for c in checks if c.status == "problem"]
    if as_json:
        emit_json({"config": loaded.path, "ran_as": user_name(os.geteuid()), "ok": not problems,
                   "checks": [c.as_dict() for c in checks]})
    else:
        table(["check", "status", "detail", "fix"], [(c.name, c.status, c.detail, c.fix) for c in checks])
    if problems:
        raise click.exceptions.Exit(1)


def _reloads(facts: Any) -> str:
    if not facts:
        return "not reported by this gateway"
    counts, last = facts.get("counts", {}), facts.get("last")
    text = f"generation {facts.get('generation', 1)}; {counts.get('ok', 0)} ok, " \
           f"{counts.get('failed', 0) + counts.get('restart_required', 0)} refused"
    if last:
        text += f"; last at {last['at']}: {'ok' if last['reloaded'] else last['message']}"
    return text


def _become(uid: int, gid: int) -> None:
    """Root drops to the gateway user for good, so the checks see what the gateway sees."""
    import os

    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
