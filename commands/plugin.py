"""Discover plugins and show their trust, configuration and grants.

Thin by design: discovery, trust and the config join live in ``ductile.plugins``; this
module parses options and renders. New subcommands (``run``, ``lock``) attach to the
``plugin`` group below with ``@plugin.command(...)``.
"""

from __future__ import annotations

import click

from ductile.cliopts import as_unit_option, config_option, json_option, run_as_unit_if_asked


@click.group()
def plugin() -> None:
    """Discover plugins and show their trust, configuration and grants."""


@plugin.command("list")
@config_option
@json_option
def list_plugins(config_path: str | None, as_json: bool) -> None:
    """List plugins: trusted or skipped, configured, enabled, grant, lock.

    Plugins refused by the trust checks are listed as skipped, with the reason and the fix.
    """
    from ductile.config import load_config
    from ductile.lock import lock_states
    from ductile.plugins.inventory import discover_for_config, plugin_rows
    from ductile.render import emit_json, say, table

    loaded = load_config(config_path)
    discovery = discover_for_config(loaded.config)
    rows = plugin_rows(loaded.config, discovery, lock_states(loaded, discovery))
    if as_json:
        emit_json({
            "config": loaded.path,
            "plugin_roots": list(loaded.config.plugin_roots),
            "plugins": [row.as_dict() for row in rows],
            "findings": [f.as_dict() for f in discovery.findings],
        })
        return
    if rows:
        table(["name", "status", "configured", "enabled", "grant", "lock", "commands", "directory"],
              [(r.name, r.status, _yes(r.configured), _yes(r.enabled), r.grant, r.lock,
                ",".join(r.commands) or "-", r.directory) for r in rows],
              styles={"name": "bold"})
    else:
        say(f"no plugins found under {', '.join(loaded.config.plugin_roots) or 'no plugin_roots'}", err=False)
    for f in discovery.findings:
        if f.severity != "info":
            say(f"{f.severity}: {f.location()}: {f.message}" + (f" (fix: {f.fix})" if f.fix else ""), err=False)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@plugin.command("run")
@click.argument("name")
@click.option("--command", "-C", "command", default="poll", show_default=True, help="Plugin command to run.")
@click.option("--payload", default="{}", metavar="JSON", help="Payload object: inline JSON, @FILE, or - for stdin.")
@config_option
@json_option
@as_unit_option
@click.pass_context
def run(ctx: click.Context, name: str, command: str, payload: str, config_path: str | None, as_json: bool,
        as_unit: bool) -> None:
    """Run one job now, through the same gate, reconcile, resolve and spawn path as serve.

    This process is the gateway for that job: from a root shell, --as-unit runs it with
    the unit's user and capabilities, as serve would.
    Prints the plugin's response on stdout; on stderr, the account and uid it ran as.
    Exit 0 when the job succeeded, 1 otherwise (a refused gate runs nothing).
    """
    run_as_unit_if_asked(as_unit, config_path)
    from ductile.config import load_config
    from ductile.render import emit_json, say
    from ductile.runtime.oneshot import parse_payload, run_once

    result, runtime = run_once(load_config(config_path), name, command, parse_payload(payload))
    say(runtime.posture_line())
    say(f"ran {name} {command} as {result.account.describe() if result.account else 'nothing (refused before spawn)'}"
        + (f", pid {result.pid}" if result.pid else ""))
    out = result.as_dict()
    if as_json:
        emit_json(out)
    elif result.outcome.response is not None:
        emit_json(out["outcome"]["result"])
    if result.outcome.error is not None:
        say(f"ductile: job {result.outcome.status}: {result.outcome.error.one_line()}")
    ctx.exit(0 if result.outcome.status == "succeeded" else 1)


@plugin.command("lock")
@click.argument("name", required=False)
@click.option("--all", "all_code", is_flag=False, flag_value="", default=None, metavar="[CODE]",
              help="List what locking every configured plugin would change, with a confirmation code; "
                   "with that CODE, write it.")
@config_option
@json_option
def lock(name: str | None, all_code: str | None, config_path: str | None, as_json: bool) -> None:
    """Record keyed fingerprints of a plugin's manifest and entrypoint in <config dir>/.checksums.

    `plugin lock NAME` records one plugin. `plugin lock --all` lists what it would change
    (+ new / ~ changed / - removed, with each entrypoint) and prints a 5-character code;
    `plugin lock --all CODE` writes the lock only if the plugins still match that list.
    With nothing to change there is no code to ask for.
    """
    from ductile.config import load_config
    from ductile.errors import UsageError
    from ductile.lock import commit_all, lock_one, preview_all, vault_nonce
    from ductile.plugins.inventory import discover_for_config
    from ductile.render import emit_json, say

    if (name is None) == (all_code is None):
        raise UsageError("give either a plugin NAME or --all", where="plugin lock",
                         fix="`ductile plugin lock echo` or `ductile plugin lock --all`")
    loaded = load_config(config_path)
    discovery = discover_for_config(loaded.config)
    key = vault_nonce(loaded)
    if name is not None:
        fp, what = lock_one(loaded, discovery, key, name)
        if as_json:
            emit_json({"plugin": name, "change": what, "manifest_hash": fp.manifest_hash,
                       "entrypoint_hash": fp.entrypoint_hash})
        else:
            say(f"locked {name} ({what}): entrypoint {fp.entrypoint_path}", err=False)
        return
    preview = commit_all(loaded, discovery, key, all_code) if all_code else preview_all(loaded, discovery, key)
    d = preview.diff
    changes = bool(d.added or d.changed or d.removed)
    if as_json:
        emit_json({"lock_file": preview.lock_file, "code": preview.code if changes or all_code else None,
                   "committed": bool(all_code), "changes": changes,
                   "added": list(d.added), "changed": list(d.changed), "removed": list(d.removed),
                   "unchanged": list(d.unchanged)})
        return
    for sign, label, names in (("+", "new", d.added), ("~", "changed", d.changed), ("-", "removed", d.removed)):
        for n in names:
            where = f"  ({preview.entries[n].entrypoint_path})" if n in preview.entries else ""
            say(f"{sign} {label:<8} {n}{where}", err=False)
    if all_code:
        say(f"wrote {preview.lock_file} ({len(preview.entries)} plugin(s))", err=False)
    elif changes:
        say(f"confirmation code: {preview.code}  (write it with: ductile plugin lock --all {preview.code})", err=False)
    elif not preview.entries:
        say(f"nothing to lock: no configured plugin was discovered under "
            f"{', '.join(loaded.config.plugin_roots) or 'plugin_roots'} (`ductile plugin list` shows what was found)",
            err=False)
    else:
        say(f"no changes: {len(d.unchanged)} plugin(s) already locked; nothing to write", err=False)
