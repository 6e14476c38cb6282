"""Back up and restore the gateway, ask the running gateway how it is, check the state.

Thin by design: the backup plan, the archive, restore, status and selfcheck live in
``ductile.system``; this module parses options and renders. Backup and restore run as the
gateway user (or root), like the vault commands, and say so when run as anyone else.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ductile.cliopts import config_option, json_option

if TYPE_CHECKING:
    from ductile.config import LoadedConfig
    from ductile.system.plan import BackupPlan

SCOPE_CHOICES = ("db", "config", "plugins", "all")  # ductile.system.plan.SCOPES, without importing it for --help
TTY_PROGRESS_BYTES = 8 * 1024 * 1024


@click.group()
def system() -> None:
    """Back up and restore the gateway, ask the running gateway how it is, check the state."""


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _as_gateway_user(loaded: LoadedConfig, command: str) -> None:
    """Refuse anyone but the gateway user and root, naming who the gateway user is."""
    import os

    from ductile.system.backup import gateway_owner, user_name
    from ductile.system.gather import BackupError, paths_of

    owner = gateway_owner(paths_of(loaded))
    euid = os.geteuid()
    if owner is None or euid in (0, owner):
        return
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
            click.echo(f"  {src.arcroot}/  <- {src.path} ({len(files)} files, {_size(sum(m.size for m in files))})")
        else:
            extra = " (consistent snapshot)" if src.role == "db" else ""
            click.echo(f"  {src.arcroot}  <- {src.path}{extra}")
    click.echo("EXCLUDED")
    for path, reason in plan.excluded:
        click.echo(f"  {path}: {reason}")
    if plan.warnings:
        click.echo("WARNINGS")
        for warning in plan.warnings:
            click.echo(f"  {warning}")


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
    click.echo(f"wrote {result.archive} ({len(files)} files, {_size(sum(m.size for m in files))} before "
               f"compression, mode 0600)")
    for path in result.pruned:
        click.echo(f"removed {path} (--keep {keep})")
    code = result.plan.pairing_code
    if code:
        click.echo(f"pairing code {code}: write it next to the offline copy of the age key; it names the key "
                   "that opens this archive's vault")
    else:
        click.echo("no pairing code: the age key could not be read")
