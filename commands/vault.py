"""Manage the age vault: secrets, grants, principals and key rotation; values only via stdin.

Every subcommand reads ``secrets.age_key_file`` and ``secrets.vault_file`` from the config and
calls one function in ``ductile.vault.lifecycle``; nothing here decides policy. There is
deliberately no option that takes a secret value: argv is world-readable in /proc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ductile.cliopts import config_option, json_option

if TYPE_CHECKING:  # the real imports happen inside commands, so --help stays light
    from ductile.vault.audit import AuditSink
    from ductile.vault.store import VaultStore


def _context(config_path: str | None) -> tuple[VaultStore, AuditSink, str]:
    """(store, audit sink, actor) for the configured vault."""
    from ductile.config import load_config
    from ductile.vault.audit import cli_actor, default_sink
    from ductile.vault.store import VaultStore

    config = load_config(config_path).config
    return VaultStore.from_config(config.secrets), default_sink(config), cli_actor()


@click.group()
def vault() -> None:
    """Manage the age vault: init, secrets, grants, principals and key rotation.

    Secret values are read from stdin (or a hidden --prompt), never from the command line.
    """


@vault.command("init")
@config_option
def init(config_path: str | None) -> None:
    """Create the age key (if absent, mode 0600) and an empty vault holding a fresh nonce."""
    from ductile.vault.lifecycle import init_vault

    store, sink, actor = _context(config_path)
    outcome = init_vault(store, sink, actor)
    if outcome.key_created:
        click.echo(f"created age key {outcome.key_file} (mode 0600); keep an offline copy: "
                   "without it the vault cannot be opened")
    else:
        click.echo(f"using existing age key {outcome.key_file}")
    click.echo(f"created vault {outcome.vault_file} (public key {outcome.public_key})")
    _pairing(outcome.public_key)


def _pairing(public_key: str) -> None:
    from ductile.system.secretzero import pairing_code

    click.echo(f"pairing code {pairing_code(public_key)}: every `ductile system backup` made while this key is in "
               "use carries it; write it next to the key's offline copy")


@vault.command("set")
@click.argument("name")
@click.option("--grant", "grants", metavar="PRINCIPAL", multiple=True,
              help="Also grant the secret to PRINCIPAL (repeatable; existing grants are kept).")
@click.option("--prompt", is_flag=True, help="Type the value at a hidden prompt instead of piping it on stdin.")
@config_option
def set_(name: str, grants: tuple[str, ...], prompt: bool, config_path: str | None) -> None:
    """Create secret NAME, or roll its value, reading the value from stdin.

    One trailing newline is stripped; an empty value is refused; a terminal on stdin is refused
    unless --prompt is given.
    """
    import sys

    from ductile.vault.intake import read_value
    from ductile.vault.lifecycle import set_secret

    def ask() -> str:
        return str(click.prompt(f"value for {name}", hide_input=True, confirmation_prompt=True, err=True))

    store, sink, actor = _context(config_path)
    value = read_value(name, sys.stdin.buffer, stdin_is_tty=sys.stdin.isatty(),
                       prompt=ask if prompt else None)
    outcome = set_secret(store, name, value, grants, sink, actor)
    verb = "created" if outcome.created else f"rolled (roll {outcome.roll_count})"
    granted = ", ".join(outcome.principals) or "no principal (gateway use only)"
    click.echo(f"secret {name} {verb}; granted to: {granted}")


@vault.command("grant")
@click.argument("name")
@click.argument("principal")
@config_option
def grant(name: str, principal: str, config_path: str | None) -> None:
    """Let PRINCIPAL receive secret NAME from its next spawn."""
    from ductile.vault.lifecycle import grant_secret

    store, sink, actor = _context(config_path)
    changed = grant_secret(store, name, principal, sink, actor)
    click.echo(f"granted {name} to {principal}" if changed else f"{name} was already granted to {principal}")


@vault.command("revoke")
@click.argument("name")
@click.argument("principal")
@config_option
def revoke(name: str, principal: str, config_path: str | None) -> None:
    """Stop PRINCIPAL receiving secret NAME from its next spawn."""
    from ductile.vault.lifecycle import revoke_secret

    store, sink, actor = _context(config_path)
    changed = revoke_secret(store, name, principal, sink, actor)
    click.echo(f"revoked {name} from {principal}" if changed else f"{name} was not granted to {principal}")


@vault.command("list")
@config_option
@json_option
def list_(config_path: str | None, as_json: bool) -> None:
    """List secrets: names, grants, timestamps and roll counts (never values)."""
    from ductile.render import emit_json, table
    from ductile.vault.lifecycle import list_secrets

    store, _, _ = _context(config_path)
    rows = list_secrets(store.read())
    if as_json:
        emit_json({"vault": store.vault_file, "secrets": [r.as_dict() for r in rows]})
        return
    table(["secret", "principals", "created", "rolled", "rolls"],
          [(r.name, ", ".join(r.principals) or "-", r.created_at, r.rolled_at or "-", r.roll_count) for r in rows])


@vault.group("principal")
def principal() -> None:
    """Add, list and revoke the principals secrets are granted to."""


@principal.command("add")
@click.argument("name")
@config_option
def principal_add(name: str, config_path: str | None) -> None:
    """Register principal NAME (kebab-case; by default a plugin's principal is its name)."""
    from ductile.vault.lifecycle import add_principal

    store, sink, actor = _context(config_path)
    add_principal(store, name, sink, actor)
    click.echo(f"principal {name} added")


@principal.command("list")
@config_option
@json_option
def principal_list(config_path: str | None, as_json: bool) -> None:
    """List principals, their status and the secrets granted to each."""
    from ductile.render import emit_json, table
    from ductile.vault.lifecycle import list_principals

    store, _, _ = _context(config_path)
    rows = list_principals(store.read())
    if as_json:
        emit_json({"vault": store.vault_file, "principals": [r.as_dict() for r in rows]})
        return
    table(["principal", "status", "created", "revoked", "secrets"],
          [(r.name, r.status, r.created_at, r.revoked_at or "-", ", ".join(r.secrets) or "-") for r in rows])


@principal.command("revoke")
@click.argument("name")
@config_option
def principal_revoke(name: str, config_path: str | None) -> None:
    """Revoke principal NAME: its plugins fail closed instead of receiving secrets."""
    from ductile.vault.lifecycle import revoke_principal

    store, sink, actor = _context(config_path)
    revoke_principal(store, name, sink, actor)
    click.echo(f"principal {name} revoked; plugins using it now fail closed")


@vault.command("rotate-key")
@config_option
def rotate_key(config_path: str | None) -> None:
    """Re-encrypt the vault to a new age key; the old key is kept as <key>.old for you to shred.

    Crash-safe: killed at any step, the next vault command (or vault recover) finishes the
    rotation, or rolls it back if the vault was not yet encrypted to the new key.
    """
    from ductile.vault.lifecycle import rotate_key as rotate

    store, sink, actor = _context(config_path)
    outcome = rotate(store, sink, actor)
    click.echo(f"new age key {outcome.key_file} (public key {outcome.public_key}); vault re-encrypted and verified")
    click.echo(f"the old key is at {outcome.old_key_file} (a copy, not a link): it no longer opens the vault or its "
               f"backup; once you no longer need it, shred it: shred -u {outcome.old_key_file}")
    click.echo("if the old key may have leaked, also roll every secret value (ductile vault set NAME)")
    _pairing(outcome.public_key)


@vault.command("recover")
@config_option
def recover(config_path: str | None) -> None:
    """Finish or roll back an interrupted key rotation and remove stale temporary files.

    Runs under the vault lock and changes nothing else. Every vault command that writes does
    this first anyway; doctor names this command when it finds something to recover.
    """
    from ductile.vault.lifecycle import recover as run_recover

    store, sink, actor = _context(config_path)
    done = run_recover(store, sink, actor)
    for line in done:
        click.echo(line)
    if not done:
        click.echo(f"nothing to recover: {store.key_file} opens {store.vault_file}")


@vault.command("audit")
@click.option("--principal", default=None, help="Only rows about this principal.")
@click.option("--limit", default=100, show_default=True, help="Newest N rows.")
@config_option
@json_option
def audit(principal: str | None, limit: int, config_path: str | None, as_json: bool) -> None:
    """Show the vault audit trail (operations, principals, actors, outcomes; never values)."""
    from ductile.render import emit_json, table
    from ductile.state.ledger import open_ledger
    from ductile.vault.audit import describe_detail

    rows = open_ledger(config_path).audit.list_audit(limit=limit, principal=principal)
    if as_json:
        emit_json(rows)
        return
    table(["at", "op", "principal", "actor", "outcome", "detail"],
          [(r["at"], r["op"], r["principal"] or "-", r["actor"], r["outcome"], describe_detail(r["detail"]))
           for r in rows])
